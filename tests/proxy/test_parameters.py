"""The README's parameter tables are the router's own: every parameter is passed, honoured, ignored or refused as
the README says, on the endpoints it names, and none is missing."""
from __future__ import annotations

from app import ROOT
from app.proxy import admission, responses


def test_the_readme_parameter_table_is_the_routers():
    """Every parameter the README lists is treated as it says, on the endpoints it names, and none is missing."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("**Parameters.**", 1)[1].split("\n\n")[1]  # the paragraph, then the table
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    listed = {}
    for name, endpoints, what in rows:
        how = what.strip().split("**")[1]
        for endpoint in endpoints.split(","):
            listed[(name.strip().strip("`"), endpoint.strip())] = how
    actual = {(name, "chat"): how for name, (how, _) in admission.CHAT_PARAMETERS_TABLE.items()}
    actual |= {(name, "completions"): how for name, (how, _) in admission.COMPLETION_PARAMETERS_TABLE.items()}
    assert listed == actual


def test_the_readme_responses_table_is_the_routers():
    section = (ROOT / "README.md").read_text().split("**The Responses API.**", 1)[1].split("\n\n")[1]
    listed = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            name, what = line.strip("|").split("|")
            listed[name.strip().strip("`")] = what.strip().split("**")[1]
    assert listed == {name: how for name, (how, _) in responses.PARAMETERS_TABLE.items()}

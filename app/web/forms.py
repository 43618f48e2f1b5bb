"""Forms: each one lists exactly the fields a person may set."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
    URLField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, InputRequired, Length, NumberRange, Optional, Regexp

from ..accounts import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH

ECHO_LIMIT = 200  # a refused value longer than this (or than its field allows) is not shown back
FIELD_LIMIT = 10_000  # no field takes more, whatever its own validators say


class Form(FlaskForm):
    """Every form: a refused value longer than its field allows is never shown back (it may be huge)."""

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)
        for field in self:
            typed = field.raw_data[0] if field.raw_data and isinstance(field.raw_data[0], str) else None
            if typed is None:
                continue
            if len(typed) > FIELD_LIMIT and not field.errors:
                field.errors = [*field.errors, f"This is longer than the {FIELD_LIMIT:,} characters allowed."]
                valid = False
            longest = min((v.max for v in field.validators if isinstance(v, Length) and v.max >= 0),
                          default=ECHO_LIMIT)
            if field.errors and len(typed) > longest:
                field.raw_data, field.data = [""], None
        return valid


class ActionForm(Form):
    """A button that changes something: only the CSRF token."""


class SignupForm(Form):
    email = StringField("E-mail", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(
        min=MIN_PASSWORD_LENGTH, max=MAX_PASSWORD_LENGTH,
        message=f"Use a password of at least {MIN_PASSWORD_LENGTH} and at most {MAX_PASSWORD_LENGTH} characters.")])
    confirm = PasswordField("Repeat password", validators=[DataRequired(),
                                                           EqualTo("password", "The passwords do not match.")])
    invite_code = StringField("Host invite code (only to offer a GPU)", validators=[Optional(), Length(max=100)])


class ChangePasswordForm(Form):
    current = PasswordField("Current password", validators=[DataRequired(), Length(max=MAX_PASSWORD_LENGTH)])
    password = PasswordField("New password", validators=[DataRequired(), Length(
        min=MIN_PASSWORD_LENGTH, max=MAX_PASSWORD_LENGTH,
        message=f"Use a password of at least {MIN_PASSWORD_LENGTH} and at most {MAX_PASSWORD_LENGTH} characters.")])
    confirm = PasswordField("Repeat the new password",
                            validators=[DataRequired(), EqualTo("password", "The passwords do not match.")])


class LoginForm(Form):
    email = StringField("E-mail", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=MAX_PASSWORD_LENGTH)])


class RedeemInviteForm(Form):
    code = StringField("Invite code", validators=[DataRequired(), Length(max=100)])


class KeyForm(Form):
    name = StringField("Name", validators=[DataRequired(), Length(max=80)])
    spend_limit = StringField("Spend limit in USD (empty: no limit)", validators=[Optional(), Length(max=20)])
    models = SelectMultipleField("Allowed models (none selected: all)", choices=[], validate_choice=True)


class RenameKeyForm(Form):
    name = StringField("Name", validators=[DataRequired(), Length(max=80)])


class InviteForm(Form):
    note = StringField("Note (who it is for)", validators=[Optional(), Length(max=200)])
    ttl_hours = IntegerField("Valid for (hours)", default=72, validators=[DataRequired(), NumberRange(1, 24 * 90)])


PRICE = [DataRequired(), Length(max=20)]
PARSER_NAME = r"^[a-z0-9_]{1,40}$"
PARSER_MESSAGE = "A parser's name is 1 to 40 lower-case letters, digits or '_', as vLLM spells it."


class CatalogModelForm(Form):
    hf_id = StringField("Hugging Face id", validators=[DataRequired(), Length(max=200)])
    display_name = StringField("Display name", validators=[DataRequired(), Length(max=120)])
    license_name = StringField("License", validators=[DataRequired(), Length(max=120)])
    license_url = URLField("License URL", validators=[DataRequired(), Length(max=500)])
    attribution = TextAreaField("Attribution", validators=[Optional(), Length(max=2000)])
    context_length = IntegerField("Context length (tokens)", validators=[DataRequired(), NumberRange(1, 10_000_000)])
    min_vram_mib = IntegerField("Minimum VRAM (MiB, 0 for CPU)",
                                validators=[InputRequired(), NumberRange(0, 10_000_000)])
    parameters_millions = IntegerField("Parameters read per token (millions)", default=1000,
                                       validators=[InputRequired(), NumberRange(1, 10_000_000)])
    reference_input_price = StringField("Reference input price, USD per 1M tokens", validators=PRICE)
    reference_output_price = StringField("Reference output price, USD per 1M tokens", validators=PRICE)
    floor_input_price = StringField("Floor input price", validators=PRICE)
    floor_output_price = StringField("Floor output price", validators=PRICE)
    ceiling_input_price = StringField("Ceiling input price", validators=PRICE)
    ceiling_output_price = StringField("Ceiling output price", validators=PRICE)
    input_price = StringField("Current input price", validators=PRICE)
    output_price = StringField("Current output price", validators=PRICE)
    enabled = BooleanField("Enabled (clients may call it, hosts may serve it)")
    kind = SelectField("Kind", default="chat", choices=[SelectChoice("chat", "chat and completions"),
                                                        SelectChoice("embedding", "embeddings")])
    tool_call_parser = StringField("Tool-call parser (vLLM's name, e.g. hermes; empty: no tools)",
                                   validators=[Optional(), Regexp(PARSER_NAME, message=PARSER_MESSAGE)])
    reasoning_parser = StringField("Reasoning parser (vLLM's name; empty: none)",
                                   validators=[Optional(), Regexp(PARSER_NAME, message=PARSER_MESSAGE)])

    PRICE_FIELDS = ("reference_input_price", "reference_output_price", "floor_input_price", "floor_output_price",
                    "ceiling_input_price", "ceiling_output_price", "input_price", "output_price")


class GrantForm(Form):
    email = StringField("Client e-mail", validators=[DataRequired(), Length(max=254)])
    amount = StringField("Amount in USD", validators=[DataRequired(), Length(max=20)])
    memo = StringField("Why (shown in the ledger)", validators=[DataRequired(), Length(max=200)])
    idempotency_key = HiddenField(validators=[DataRequired(), Length(min=16, max=64)])  # a double submit grants once

"""The platform as a whole: config, migrations, faults, hostile input and fuzzing, the deploy units, the playbook,
the architecture rules."""

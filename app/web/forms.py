"""Forms: each one lists exactly the fields a person may set."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (BooleanField, HiddenField, IntegerField, PasswordField, SelectMultipleField, StringField, TextAreaField,
                     URLField)
from wtforms.validators import DataRequired, EqualTo, InputRequired, Length, NumberRange, Optional

from ..accounts import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH


class ActionForm(FlaskForm):
    """A button that changes something: only the CSRF token."""


class SignupForm(FlaskForm):
    email = StringField("E-mail", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(
        min=MIN_PASSWORD_LENGTH, max=MAX_PASSWORD_LENGTH,
        message=f"Use a password of at least {MIN_PASSWORD_LENGTH} and at most {MAX_PASSWORD_LENGTH} characters.")])
    confirm = PasswordField("Repeat password", validators=[DataRequired(),
                                                           EqualTo("password", "The passwords do not match.")])
    invite_code = StringField("Host invite code (only to offer a GPU)", validators=[Optional(), Length(max=100)])


class LoginForm(FlaskForm):
    email = StringField("E-mail", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=MAX_PASSWORD_LENGTH)])


class RedeemInviteForm(FlaskForm):
    code = StringField("Invite code", validators=[DataRequired(), Length(max=100)])


class KeyForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=80)])
    spend_limit = StringField("Spend limit in USD (empty: no limit)", validators=[Optional(), Length(max=20)])
    models = SelectMultipleField("Allowed models (none selected: all)", choices=[], validate_choice=True)


class RenameKeyForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=80)])


class InviteForm(FlaskForm):
    note = StringField("Note (who it is for)", validators=[Optional(), Length(max=200)])
    ttl_hours = IntegerField("Valid for (hours)", default=72, validators=[DataRequired(), NumberRange(1, 24 * 90)])


class CatalogModelForm(FlaskForm):
    hf_id = StringField("Hugging Face id", validators=[DataRequired(), Length(max=200)])
    display_name = StringField("Display name", validators=[DataRequired(), Length(max=120)])
    license_name = StringField("License", validators=[DataRequired(), Length(max=120)])
    license_url = URLField("License URL", validators=[DataRequired(), Length(max=500)])
    attribution = TextAreaField("Attribution", validators=[Optional(), Length(max=2000)])
    context_length = IntegerField("Context length (tokens)", validators=[DataRequired(), NumberRange(1, 10_000_000)])
    min_vram_mib = IntegerField("Minimum VRAM (MiB, 0 for CPU)", validators=[InputRequired(), NumberRange(0, 10_000_000)])
    reference_input_price = StringField("Reference input price, USD per 1M tokens", validators=[DataRequired()])
    reference_output_price = StringField("Reference output price, USD per 1M tokens", validators=[DataRequired()])
    floor_input_price = StringField("Floor input price", validators=[DataRequired()])
    floor_output_price = StringField("Floor output price", validators=[DataRequired()])
    ceiling_input_price = StringField("Ceiling input price", validators=[DataRequired()])
    ceiling_output_price = StringField("Ceiling output price", validators=[DataRequired()])
    input_price = StringField("Current input price", validators=[DataRequired()])
    output_price = StringField("Current output price", validators=[DataRequired()])
    enabled = BooleanField("Enabled (clients may call it, hosts may serve it)")

    PRICE_FIELDS = ("reference_input_price", "reference_output_price", "floor_input_price", "floor_output_price",
                    "ceiling_input_price", "ceiling_output_price", "input_price", "output_price")


class GrantForm(FlaskForm):
    email = StringField("Client e-mail", validators=[DataRequired(), Length(max=254)])
    amount = StringField("Amount in USD", validators=[DataRequired(), Length(max=20)])
    memo = StringField("Why (shown in the ledger)", validators=[DataRequired(), Length(max=200)])
    idempotency_key = HiddenField(validators=[DataRequired(), Length(min=16, max=64)])  # a double submit grants once

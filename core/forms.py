from django.forms.renderers import TemplatesSetting


class FormRenderer(TemplatesSetting):
    """Every form renders with the project's accessible field markup (templates/forms/)."""

    form_template_name = "forms/form.html"
    field_template_name = "forms/field.html"


def form_error(form, error) -> None:
    """Show a service's refusal (ServiceError) on its field, or above the form."""
    form.add_error(error.field if error.field in form.fields else None, error.message)

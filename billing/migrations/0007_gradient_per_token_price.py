"""C_gradient per token: a gradient is one trainable element on one trained token (gpu_runtime.training_spec), so
the default price per million gradients is $0.00000005 ($0.046 per million tokens on SmolLM2-135M with LoRA r=8
on q, v). Every plan whose newest version still has the per-micro-batch default ($0.05) takes that price: a
version no ledger row points at yet is set to it (it has priced nothing, so no history changes: a fresh install's
standard v1), and a version that has priced usage is kept as it is and followed by a new version with the new
price, effective when this migration runs, every other field copied. Ledger rows are never touched; plans with a
price of their own are the operator's to change."""

from decimal import Decimal

import django.core.validators
from django.db import migrations, models
from django.utils import timezone

PER_MICRO_BATCH_PRICE = Decimal("0.05")
PER_TOKEN_PRICE = Decimal("0.00000005")
KEEP = {"id", "version", "effective_from", "gradient_price_per_million", "created_at"}


def add_per_token_versions(apps, schema_editor):
    PricePlan = apps.get_model("billing", "PricePlan")
    UsageEvent = apps.get_model("billing", "UsageEvent")
    now = timezone.now()
    for name in sorted(set(PricePlan.objects.values_list("name", flat=True))):
        newest = PricePlan.objects.filter(name=name).order_by("-effective_from", "-version").first()
        if newest.gradient_price_per_million != PER_MICRO_BATCH_PRICE:
            continue
        if not UsageEvent.objects.filter(plan_id=newest.pk).exists():
            PricePlan.objects.filter(pk=newest.pk).update(gradient_price_per_million=PER_TOKEN_PRICE)
            continue
        copied = {f.attname: getattr(newest, f.attname) for f in PricePlan._meta.concrete_fields
                  if f.attname not in KEEP}
        version = PricePlan.objects.filter(name=name).aggregate(n=models.Max("version"))["n"] + 1
        PricePlan.objects.create(**copied, version=version, effective_from=max(now, newest.effective_from),
                                 gradient_price_per_million=PER_TOKEN_PRICE)


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0006_invoiced_usage_and_document"),
    ]

    operations = [
        migrations.AlterField(
            model_name="priceplan",
            name="gradient_price_per_million",
            field=models.DecimalField(decimal_places=10, default=Decimal("0.00000005"), max_digits=24,
                                      validators=[django.core.validators.MinValueValidator(Decimal("0"))]),
        ),
        migrations.RunPython(add_per_token_versions, migrations.RunPython.noop),
    ]

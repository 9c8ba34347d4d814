"""OpenAPI shapes of the training API's answers (training/api.py), field for field as ``job_json``, the estimate
(training.jobs.Estimate.to_json), the events and the checkpoints are built."""

from rest_framework import serializers

from vajra.schema import constant, enum, listing, shape

from .models import TrainingEvent, TrainingJob

JOB_STATUSES = tuple(status for status, _ in TrainingJob.STATUS_CHOICES)


def money(name, **fields):
    return shape(name, {
        **fields, "cost_micro_usd": serializers.IntegerField(),
        "cost_usd": serializers.CharField(help_text="Dollars to six places, e.g. \"0.012345\".")})


JobOut = shape("TrainingJob", {
    "id": serializers.CharField(help_text="ftjob_..."), "object": constant("training.job"),
    "model": serializers.CharField(help_text="The base model."), "adapter": serializers.CharField(),
    "base_version": serializers.IntegerField(allow_null=True, help_text="The version it continues from."),
    "result_version": serializers.IntegerField(allow_null=True, help_text="The version it made, once it succeeded."),
    "dataset": serializers.CharField(),
    "validation_dataset": serializers.CharField(allow_null=True, help_text="Its loss is measured after each epoch."),
    "status": enum(*JOB_STATUSES),
    "hyperparameters": serializers.DictField(help_text="As given, with the defaults filled in."),
    "node": serializers.CharField(allow_null=True), "total_steps": serializers.IntegerField(),
    "trained_steps": serializers.IntegerField(), "trainable_params": serializers.IntegerField(),
    "last_loss": serializers.FloatField(allow_null=True),
    "last_eval_loss": serializers.FloatField(allow_null=True, help_text="The validation loss after the last epoch."),
    "estimate": money("TrainingJobEstimate", gradients=serializers.IntegerField(),
                      total_steps=serializers.IntegerField(), trainable_params=serializers.IntegerField()),
    "usage": money("TrainingJobUsage", steps=serializers.IntegerField(), gradients=serializers.IntegerField()),
    "error": shape("TrainingJobError", {"code": serializers.CharField(),
                                                    "message": serializers.CharField()}, allow_null=True),
    "created_at": serializers.DateTimeField(), "started_at": serializers.DateTimeField(allow_null=True),
    "finished_at": serializers.DateTimeField(allow_null=True),
    "cancel_requested_at": serializers.DateTimeField(allow_null=True),
})

JobListOut = listing("TrainingJobList", JobOut, has_more=serializers.BooleanField())

EstimateOut = shape("TrainingEstimate", {
    "object": constant("training.estimate"), "model": serializers.CharField(),
    "records": serializers.IntegerField(), "total_steps": serializers.IntegerField(),
    "trainable_params": serializers.IntegerField(), "dataset_tokens": serializers.IntegerField(),
    "tokens_exact": serializers.BooleanField(help_text="False: dataset_tokens is an upper bound."),
    "trained_tokens": serializers.IntegerField(), "gradients": serializers.IntegerField(),
    "cost_micro_usd": serializers.IntegerField(help_text="Rounded up: an estimate never under-quotes."),
    "cost_usd": serializers.CharField(), "cost_exact_usd": serializers.CharField(help_text="At the ledger's places."),
    "per_million_tokens": money("TrainingPerMillionTokens"),
    "prices": shape("TrainingPrices", {
        "c_gradient_usd": serializers.CharField(help_text="Dollars per million gradients, exact."),
        "p_gpu_micro_usd_per_hour": serializers.IntegerField(), "plan": serializers.CharField()}),
})

EventsOut = listing("TrainingEventList", shape("TrainingEvent", {
    "id": serializers.IntegerField(help_text="Follow a job with ?after=<the last id>."),
    "object": constant("training.event"), "created_at": serializers.DateTimeField(),
    "level": enum(TrainingEvent.INFO, TrainingEvent.WARNING, TrainingEvent.ERROR), "message": serializers.CharField(),
    "step": serializers.IntegerField(allow_null=True), "loss": serializers.FloatField(allow_null=True),
    "eval_loss": serializers.FloatField(allow_null=True, help_text="At an epoch's last step (a validation file).")}),
    job=serializers.CharField(), status=enum(*JOB_STATUSES), has_more=serializers.BooleanField())

CheckpointsOut = listing("TrainingCheckpointList", shape("TrainingCheckpoint", {
    "object": constant("training.checkpoint"), "step": serializers.IntegerField(),
    "loss": serializers.FloatField(allow_null=True), "created_at": serializers.DateTimeField()}),
    job=serializers.CharField())

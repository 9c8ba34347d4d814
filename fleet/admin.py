from django.contrib import admin

from .models import Node


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "device", "base_model", "last_heartbeat_at")
    readonly_fields = ("state",)

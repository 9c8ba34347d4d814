from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "Fleet: runtime nodes and placement"

    def ready(self):
        from adapters import tier_moves, views

        from . import placement

        # adapters sits below fleet: its tier changes reach the nodes through placement, looked up at each call
        tier_moves.register(check_hot=lambda **kwargs: placement.check_hot(**kwargs),
                            send=lambda version, tier=None: placement.send_tier(version, tier))
        views.detail_facts.append(placement.residence_facts)

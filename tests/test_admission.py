"""The admission queue's order: tenants take turns, the one served longest ago (or never) first; first come,
first served when fairness is off."""

from types import SimpleNamespace

from gpu_runtime.admission import AdmissionQueue


def handle(tenant, n):
    return SimpleNamespace(request=SimpleNamespace(tenant=tenant), submitted=n, name=f"{tenant}{n}")


def names(queue):
    return [h.name for h in queue.in_turn()]


def test_tenants_take_turns_and_a_newcomer_goes_first():
    queue = AdmissionQueue()
    for n in range(4):
        queue.append(handle("acme", n))
    queue.append(handle("contoso", 4))
    assert names(queue) == ["acme0", "contoso4", "acme1", "acme2", "acme3"]
    first = queue.in_turn()
    queue.keep(first[2:])  # acme0 and contoso4 were admitted (contoso last in the turn order)
    queue.append(handle("fabrikam", 5))
    queue.append(handle("contoso", 6))
    # fabrikam was never served; acme was served at the same turn as contoso, and waited longer
    assert names(queue) == ["fabrikam5", "acme1", "contoso6", "acme2", "acme3"]
    assert len(queue) == 5


def test_a_tenant_served_last_waits_for_the_others_turn():
    queue = AdmissionQueue()
    for n in range(3):
        queue.append(handle("acme", n))
    queue.keep(queue.in_turn()[1:])  # acme0 admitted
    queue.append(handle("contoso", 3))
    assert names(queue) == ["contoso3", "acme1", "acme2"]
    queue.keep(queue.in_turn()[1:])  # contoso3 admitted: acme is next
    queue.append(handle("contoso", 4))
    assert names(queue) == ["acme1", "contoso4", "acme2"]


def test_first_come_first_served_without_fairness():
    queue = AdmissionQueue(fair=False)
    for n, tenant in enumerate(["acme", "acme", "contoso", "acme"]):
        queue.append(handle(tenant, n))
    assert names(queue) == ["acme0", "acme1", "contoso2", "acme3"]
    queue.keep(queue.in_turn()[2:])
    assert names(queue) == ["contoso2", "acme3"] and bool(queue)

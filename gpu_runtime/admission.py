"""The engine's admission queue, fair across tenants: what waits for a row is served tenant by tenant.

Each tenant's waiting requests keep their arrival order in the tenant's own queue. When rows free up, the engine
takes requests in turns: first the head of every waiting tenant's queue, the tenant served longest ago (or never)
first, then each one's second, and so on. So a tenant that floods the node with requests (up to its plan's
concurrency quota) delays another tenant's lone request by at most one turn: the lone request is next in line as
soon as a row is free, ahead of every flooded request still waiting. Requests without a tenant share one queue.

``fair=False`` serves the queue first come, first served (the benchmark's baseline, bench/fairness.py).
"""

import itertools
from collections import OrderedDict, deque

REMEMBERED_TENANTS = 4096  # tenants whose last turn is kept; one forgotten counts as served longest ago


class AdmissionQueue:
    def __init__(self, fair=True):
        self.fair = fair
        self._queues = {}  # tenant -> deque of handles, in arrival order
        self._arrivals = deque()  # every waiting handle in arrival order (first come, first served)
        self._served = OrderedDict()  # tenant -> the admission turn it was last served at, oldest first
        self._turns = itertools.count()

    def append(self, handle):
        tenant = handle.request.tenant
        self._queues.setdefault(tenant, deque()).append(handle)
        self._arrivals.append(handle)

    def __len__(self):
        return len(self._arrivals)

    def __bool__(self):
        return bool(self._arrivals)

    def in_turn(self):
        """Every waiting handle in the order the next admission round considers them."""
        if not self.fair:
            return list(self._arrivals)
        tenants = sorted(self._queues, key=lambda t: (self._served.get(t, -1), self._queues[t][0].submitted))
        order = []
        for depth in range(max((len(q) for q in self._queues.values()), default=0)):
            order.extend(self._queues[t][depth] for t in tenants if depth < len(self._queues[t]))
        return order

    def discard(self, handles):
        """Takes ``handles`` out of the queue without a turn: requests that left before they were considered (a
        cancelled one) leave their tenant's place in the turns as it was."""
        gone = {id(handle) for handle in handles}
        if not gone:
            return
        self._arrivals = deque(h for h in self._arrivals if id(h) not in gone)
        for tenant, waiting in list(self._queues.items()):
            waiting = deque(h for h in waiting if id(h) not in gone)
            if waiting:
                self._queues[tenant] = waiting
            else:
                del self._queues[tenant]

    def keep(self, waiting):
        """Ends a round: ``waiting`` (in any order) still waits; every other handle left the queue (admitted or
        failed), and its tenant counts as served at this turn."""
        still = {id(handle) for handle in waiting}
        turn = next(self._turns)
        for handle in self._arrivals:
            if id(handle) not in still:
                self._served[handle.request.tenant] = turn
                self._served.move_to_end(handle.request.tenant)
        self._arrivals = deque(h for h in self._arrivals if id(h) in still)
        self._queues = {}
        for handle in self._arrivals:
            self._queues.setdefault(handle.request.tenant, deque()).append(handle)
        while len(self._served) > REMEMBERED_TENANTS:
            self._served.popitem(last=False)

"""A function run on a thread of its own, one side at a time: ``resume`` runs it until it calls ``pause`` (or
returns), so a long computation can give way at points of its choosing and go on later where it stopped, its
stack and locals intact. The caller and the function never run at once: each waits while the other works, so
state they share needs no lock, and the machine's cores go to one of them at a time.

The engine uses it for a training micro-step's forward pass: it gives way to an arriving inference request at a
decoder layer's boundary and goes on from that layer afterwards, so nothing computed is thrown away.
"""

import threading


class Abandoned(BaseException):
    """Raised at the function's ``pause`` when its caller closes it: the function's stack unwinds and its thread
    ends (a BaseException, so the function's own ``except Exception`` does not swallow it)."""


class Pausable:
    def __init__(self, fn, *, name):
        """``fn(pausable)`` runs on the thread at the first ``resume``; it calls ``pausable.pause()`` to give way."""
        self._fn = fn
        self._go = threading.Semaphore(0)
        self._back = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._abandon = False
        self.done = False
        self.result = None
        self._error = None

    def _run(self):
        self._go.acquire()
        try:
            if not self._abandon:
                self.result = self._fn(self)
        except Abandoned:
            pass
        except BaseException as exc:  # handed to the caller's resume, which raises it there
            self._error = exc
        finally:
            self.done = True
            self._back.release()

    # ---- the function's thread ----------------------------------------------------------------------------------
    def pause(self):
        """Gives the caller its turn back; returns at the next ``resume`` (raises Abandoned at ``close``)."""
        self._back.release()
        self._go.acquire()
        if self._abandon:
            raise Abandoned

    # ---- the caller's thread ------------------------------------------------------------------------------------
    def resume(self):
        """Runs the function until it pauses or returns; True once it has returned (its value in ``result``).
        An exception the function raised is raised here."""
        if self.done:
            return True
        if self._thread.ident is None:
            self._thread.start()
        self._go.release()
        self._back.acquire()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self.done

    def close(self):
        """Abandons a paused function (its stack unwinds at its ``pause``) and waits for its thread to end."""
        if self.done:
            return
        self._abandon = True
        if self._thread.ident is not None:  # started: it is waiting at a pause
            self._go.release()
            self._back.acquire()
            self._thread.join()
        self.done = True

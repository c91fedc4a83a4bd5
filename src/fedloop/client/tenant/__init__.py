"""One tenant inside its ClientApp, and what it does each round, one module per job.

`core.py` holds what the jobs share (settings, keys, store, release pointer,
adapters in memory); `install.py` verifies and installs a global version;
`training.py` trains the local recipe on the product's feedback (less the
held-out slice); `personalisation.py` builds the tenant's own candidate;
`gates.py` measures versions on the tenant's held-out finals, gates them and
offers the better candidate. The ClientApp (client/app.py) wraps these with the
sealed protocol. Release decisions on live traffic run where outcomes arrive
(the draft endpoint and FeedbackService, release/loop.py), not here.
"""

from fedloop.client.tenant.gates import Gating
from fedloop.client.tenant.install import Installing, shared_model
from fedloop.client.tenant.training import LOCAL_B, TrainOutcome


class Tenant(Installing, Gating):
    """A tenant with every job of its round."""


__all__ = ["LOCAL_B", "Tenant", "TrainOutcome", "shared_model"]

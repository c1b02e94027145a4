"""A local model of Letta's hosted environments server and of a Letta Code device.

`relay dev` runs it in place of Letta; the tests run it on loopback; in front of a real
`letta server` it is the bridge that plays Letta's hosted side (tests/real_device).
"""

from relay.standin.device import APPROVAL_TRIGGERS, SimulatedDevice
from relay.standin.server import (
    DEV_AGENT_ID,
    DEV_CONNECTION_NAME,
    DEV_DEVICE_ID,
    Attempt,
    Command,
    Device,
    Fault,
    LettaStandIn,
    Sock,
    Watched,
    describe,
)

__all__ = ["APPROVAL_TRIGGERS", "DEV_AGENT_ID", "DEV_CONNECTION_NAME", "DEV_DEVICE_ID", "Attempt", "Command",
           "Device", "Fault", "LettaStandIn", "SimulatedDevice", "Sock", "Watched", "describe"]

"""The development harness: a real fleet on this machine for tests, benchmarks and the
demo. A private Mosquitto, an artifact server, the operator's side played in-process
(signing, publishing, watching), agents and `edgefleet serve` as subprocesses, small
digits models (an ONNX MLP, slow and failing variants of it, a torch CNN), steady client
traffic on the agents' inference endpoints, and one way to wait on evidence.

Installed by `make setup` (`pip install -e harness`); nothing shipped imports it.
"""

from ._artifacts import ArtifactServer, ServerFaults
from ._broker import STOCK_AUTOSAVE_S, Broker, free_port, mosquitto_binary, wait_port
from ._controller import ControllerFleet, Proc
from ._digits_cnn import TRAIN_ROWS, build_cnn, digits_images, train_cnn, write_eval_npz
from ._edge_cnns import (
    MOBILENET_V3_SMALL,
    build_mobilenet_v3_small,
    edge_images,
    train_mobilenet,
    write_edge_eval_npz,
)
from ._encoder import (
    BENCH_ENCODER,
    ENCODER_INPUTS,
    EncoderShape,
    build_encoder,
    contrast_encoder,
    export_encoder,
    made_up_sentences,
    train_encoder,
    write_encoder_eval_npz,
)
from ._faultfleet import (
    CRASH_MOMENTS,
    DeviceLinks,
    DeviceReport,
    FaultFleet,
    FaultRun,
    RegistryRow,
    broker_crash,
    fault_scenarios,
    partition,
    serve_down,
    slow_links,
)
from ._fleet import (
    DIGITS_IO,
    AgentProcess,
    Observer,
    Operator,
    infer_digits,
    smoke_sample,
)
from ._local_fleet import LocalFleet, rss_bytes
from ._models import (
    POISON_ABOVE,
    digits,
    digits_model,
    failing_digits_model,
    poisoned,
    slow_digits_model,
    write_digits_model,
    write_failing_digits_model,
    write_slow_digits_model,
)
from ._prometheus import Prometheus, prometheus_binary
from ._proxy import LinkState, TcpProxy
from ._public_api import public_names, ruff_order
from ._simfleet import SimDevice, SimTimings
from ._simfleet_procs import FleetWorkers
from ._traffic import ClientTraffic, DeviceTally
from ._waiting import wait_until

__all__ = [
    "BENCH_ENCODER",
    "CRASH_MOMENTS",
    "DIGITS_IO",
    "ENCODER_INPUTS",
    "MOBILENET_V3_SMALL",
    "POISON_ABOVE",
    "STOCK_AUTOSAVE_S",
    "TRAIN_ROWS",
    "AgentProcess",
    "ArtifactServer",
    "Broker",
    "ClientTraffic",
    "ControllerFleet",
    "DeviceLinks",
    "DeviceReport",
    "DeviceTally",
    "EncoderShape",
    "FaultFleet",
    "FaultRun",
    "FleetWorkers",
    "LinkState",
    "LocalFleet",
    "Observer",
    "Operator",
    "Proc",
    "Prometheus",
    "RegistryRow",
    "ServerFaults",
    "SimDevice",
    "SimTimings",
    "TcpProxy",
    "broker_crash",
    "build_cnn",
    "build_encoder",
    "build_mobilenet_v3_small",
    "contrast_encoder",
    "digits",
    "digits_images",
    "digits_model",
    "edge_images",
    "export_encoder",
    "failing_digits_model",
    "fault_scenarios",
    "free_port",
    "infer_digits",
    "made_up_sentences",
    "mosquitto_binary",
    "partition",
    "poisoned",
    "prometheus_binary",
    "public_names",
    "rss_bytes",
    "ruff_order",
    "serve_down",
    "slow_digits_model",
    "slow_links",
    "smoke_sample",
    "train_cnn",
    "train_encoder",
    "train_mobilenet",
    "wait_port",
    "wait_until",
    "write_digits_model",
    "write_edge_eval_npz",
    "write_encoder_eval_npz",
    "write_eval_npz",
    "write_failing_digits_model",
    "write_slow_digits_model",
]

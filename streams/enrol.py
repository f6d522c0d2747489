"""Device enrolment: one credential per device, for the ingest endpoint and for MQTT.

`patient-twin devices add` and the simulator (`simulate --credentials`) enrol devices here: the
credential's hash goes to DEVICES_FILE (streams.ingest checks it) and, when MQTT_PASSWORD_FILE is
set, the same credential hashed in Mosquitto's format to its password file (user name = the
device id), so a device uses one secret over HTTPS and MQTT.
"""

from __future__ import annotations

from streams.config import Settings
from streams.errors import ConfigError
from streams.ingest import add_device, check_device_id
from streams.mqtt import set_passwords


def enrol(settings: Settings, device_ids: list[str]) -> dict[str, str]:
    """Issue a credential to each device: device id -> credential (to be shown once). Every id
    is checked before anything is written."""
    if settings.devices_file is None:
        raise ConfigError("DEVICES_FILE is not set: say where device credential hashes live")
    for d in device_ids:
        check_device_id(d)
    tokens = {d: add_device(settings.devices_file, d) for d in device_ids}
    if settings.mqtt_password_file is not None:
        # Mosquitto reads its password file at start and on SIGHUP
        set_passwords(settings.mqtt_password_file, tokens)
    return tokens

"""React to genre-stream events: a minimal MQTT subscriber (paho-mqtt 2.x).

    python examples/subscriber.py --broker mqtt://localhost:1883 [--prefix genre-stream]

Prints every genre change and tagged track, keeps the latest state per source, and shows
where your own reaction goes (`on_genre_changed`): switch a playlist, set lights, log a set.
"""

from __future__ import annotations

import argparse
import json
import logging
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger("subscriber")


def on_genre_changed(source: str, old: str | None, new: str, confidence: float) -> None:
    """Put your reaction here."""
    log.info("%s: %s -> %s (%.0f%%)", source, old or "nothing", new, confidence * 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://localhost:1883")
    parser.add_argument("--prefix", default="genre-stream")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    url = urlsplit(args.broker)
    latest: dict[str, dict] = {}

    def on_connect(client, userdata, flags, reason, properties):
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        # state is retained: the current genre of every source arrives right after subscribing.
        client.subscribe([(f"{args.prefix}/+/state", 1), (f"{args.prefix}/+/event", 1), (f"{args.prefix}/status", 1)])

    def on_message(client, userdata, msg):
        if msg.topic == f"{args.prefix}/status":
            log.info("daemon is %s", msg.payload.decode())
            return
        payload = json.loads(msg.payload)
        if msg.topic.endswith("/state"):
            latest[payload["source"]] = payload
        elif payload["type"] == "genre_changed":
            on_genre_changed(payload["source"], payload["from"], payload["to"], payload["confidence"])
        elif payload["type"] == "track_tagged":
            log.info("%s: %s is %s (%.0f%%)", payload["source"], payload["path"], payload["genre"], payload["confidence"] * 100)
        elif payload["type"] == "error":
            log.warning("%s: %s", payload["source"], payload["reason"])

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_connect = on_connect
    client.on_message = on_message
    if url.scheme == "mqtts":
        client.tls_set()
    client.connect(url.hostname or "localhost", url.port or (8883 if url.scheme == "mqtts" else 1883))
    try:
        client.loop_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

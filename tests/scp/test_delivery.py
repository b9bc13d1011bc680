"""Result delivery through the durable outbox, against a real DCMTK storescp that is down first."""

from __future__ import annotations

import json

from kneenode.settings import DeliverySettings, DestinationSettings, PeerSettings, Settings
from scp.delivery import deliver, resolve_targets
from scp.sender import Destination
from tests.support.dcmtk import dcmtk_env
from tests.support.mr import mr_series
from tests.support.procs import free_port, port_open, start, stop, wait_for


def test_down_destination_then_up_sends_only_what_is_missing(tmp_path):
    files = mr_series(tmp_path / "results", slices=6)
    port = free_port()
    options = DeliverySettings(destinations=[DestinationSettings(ae_title="STORESCP",
                                                                 host="127.0.0.1", port=port)],
                               timeout=30)  # per send; a loaded storescp may be slow
    settings = Settings(delivery=options)
    targets = resolve_targets(settings, "ANY")
    outbox = tmp_path / "outbox.json"
    first = deliver(outbox, files, targets, options)
    assert not first.done and first.pending == {f"STORESCP@127.0.0.1:{port}": 6}
    assert "not established" in first.errors[f"STORESCP@127.0.0.1:{port}"]

    out = tmp_path / "received"
    out.mkdir()
    proc = start(["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
                 log=tmp_path / "storescp.log", env=dcmtk_env())
    try:
        wait_for(lambda: port_open(port), 60, what="storescp")
        # pretend an earlier attempt already delivered two: they must not be sent again
        box = json.loads(outbox.read_text())
        entries = box["destinations"][f"STORESCP@127.0.0.1:{port}"]
        for entry in list(entries.values())[:2]:
            entry["state"] = "sent"
        outbox.write_text(json.dumps(box))
        second = deliver(outbox, files, targets, options)
        assert second.done, second.errors
        assert len(list(out.iterdir())) == 4
        third = deliver(outbox, files, targets, options)
        assert third.done and len(list(out.iterdir())) == 4  # nothing twice
        states = [e["state"] for e in json.loads(outbox.read_text())["destinations"][
            f"STORESCP@127.0.0.1:{port}"].values()]
        assert states == ["sent"] * 6
    finally:
        stop(proc)


def test_targets_include_the_sender_when_configured():
    settings = Settings(
        scp={"peers": [PeerSettings(ae_title="PACS", return_to="PACSIN@10.0.0.5:104")]},
        delivery=DeliverySettings(to_sender=True, destinations=[
            DestinationSettings(ae_title="ARCHIVE", host="10.0.0.9", port=11112)]),
    )
    got = [t.destination for t in resolve_targets(settings, "PACS")]
    assert got == [Destination("ARCHIVE", "10.0.0.9", 11112), Destination("PACSIN", "10.0.0.5", 104)]
    assert [t.destination for t in resolve_targets(settings, "OTHER")] == got[:1]

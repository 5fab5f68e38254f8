#!/usr/bin/env python3
"""What a rotation costs: re-dealing a version with 100 secrets as custodians leave and join.

Starts a 2-of-5 cluster (`quorumvm dev --custodians 5 --threshold 2 --insecure-loopback`, in
a temporary directory), installs a version with 100 secret weights, then removes custodian 5
(2-of-4) and custodian 4 (2-of-3) with `quorumvm custodian remove` as two operators each,
refreshes the shares of the 2-of-3 left (`quorumvm reshare`) for comparison, and brings a new
machine in (`quorumvm custodian add`, 2-of-4: its `Join` fetches and checks the version, then
the re-dealing). Prints the time each took, as the coordinator measured it (from the k-th
approval to the last commit).

    cargo build --release -p quorumvm-cli && python3 scripts/rotation-bench.py [BINARY]
"""
import json
import subprocess
import sys
import tempfile
import time
import tomllib

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/quorumvm"


def run(*args):
    p = subprocess.run([BINARY, *args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"quorumvm {' '.join(args[:2])} failed: {p.stderr}{joiner_log()}")
    return p.stdout


def joiner_log():
    try:
        return "\nthe new machine's log:\n" + open(f"{DIR}/custodian-new.log").read()
    except OSError:
        return ""


def main(d):
    run("dev", "--init-only", "--dir", d, "--port", "0", "--custodians", "5",
        "--threshold", "2", "--insecure-loopback")
    config = tomllib.load(open(f"{d}/coordinator.toml", "rb"))
    coordinator = f"http://{config['listen']}"
    own = {c["index"]: c["url"] for c in config["custodians"]}
    dev = subprocess.Popen([BINARY, "dev", "--dir", d], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        lines = ["program hundred", "version 1", "policy budget 1000000000",
                 "policy rate 1000000 per second"]
        for i in range(1, 101):
            lines += [f"input f{i} in 0..1000", f"secret w{i} in -10..10 scale 2"]
        weights = " ".join(f"w{i}" for i in range(1, 101))
        features = " ".join(f"f{i}" for i in range(1, 101))
        lines += [f"dot s = [{weights}] [{features}]", "output s"]
        with open(f"{d}/hundred.qvm", "w") as f:
            f.write("\n".join(lines) + "\n")
        run("compile", f"{d}/hundred.qvm", "-o", f"{d}/hundred.wasm")
        run("sign", f"{d}/hundred.wasm", "--key", f"{d}/publisher/publisher.key")
        install = ["install", f"{d}/hundred.wasm", "--key", f"{d}/publisher/publisher.key",
                   "--json", "--coordinator", coordinator]
        for i in range(1, 101):
            install += ["--secret", f"w{i}={i % 9}.{(i * 7) % 100:02}"]
        package = json.loads(run(*install))["package_id"]

        def operator(i):
            return ["--key", f"{d}/operators/custodian-{i}.key", "--coordinator", coordinator,
                    "--json"]

        for i in (1, 2):
            run("approve", package, *operator(i))
        time.sleep(3)
        for index, approvers in [(5, (1, 2)), (4, (1, 3))]:
            for i in approvers:
                state = json.loads(run("custodian", "remove", str(index), "--threshold", "2",
                                       "--custodian", own[i], *operator(i)))
            r = state["rotation"]
            print(f"rotation removing custodian {index} (to {r['threshold']}-of-"
                  f"{len(r['members'])}), 100 secrets: {r['ms']} ms")
            time.sleep(2)
        r = json.loads(run("reshare", "--config", f"{d}/coordinator.toml", "--json"))
        print(f"refresh of the same {r['secrets']} secrets on the 2-of-3 left: {r['ms']} ms")
        joiner = join_a_machine(d, coordinator, own, operator)
        try:
            time.sleep(2)
        finally:
            joiner.terminate()
            joiner.wait()
    finally:
        dev.terminate()
        dev.wait()


def join_a_machine(d, coordinator, own, operator):
    """A new machine, as its operator sets it up (keys, a config naming the configured cluster
    at index 4), started, and brought in by two operators' `quorumvm custodian add`."""
    run("keygen", "-o", f"{d}/operators/custodian-new")
    operator_key = open(f"{d}/operators/custodian-new.pub").read().strip().split(":")[-1]
    keys = json.loads(run("server-keys", "custodian", "--data-dir", f"{d}/custodian-new",
                          "--json"))
    text = open(f"{d}/custodian-1.toml").read()
    first = tomllib.loads(text)
    port = free_port()
    text = (text.replace("index = 1\n", "index = 4\njoins = true\n", 1)
            .replace(f'listen = "{first["listen"]}"', f'listen = "127.0.0.1:{port}"', 1)
            .replace('data_dir = "custodian-1"', 'data_dir = "custodian-new"', 1))
    with open(f"{d}/custodian-new.toml", "w") as f:
        f.write(text)
    log = open(f"{d}/custodian-new.log", "w")
    joiner = subprocess.Popen([BINARY, "custodian", "--config", f"{d}/custodian-new.toml"],
                              stdout=log, stderr=log)
    time.sleep(2)
    for i in (1, 3):
        state = json.loads(run("custodian", "add", "--url", f"http://127.0.0.1:{port}",
                               "--operator-key", operator_key,
                               "--sealing-key", keys["sealing_key"],
                               "--custodian", own[i], *operator(i)))
    r = state["rotation"]
    print(f"rotation adding a machine (to {r['threshold']}-of-{len(r['members'])}), "
          f"100 secrets: {r['ms']} ms")
    return joiner


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


with tempfile.TemporaryDirectory() as DIR:
    main(DIR)

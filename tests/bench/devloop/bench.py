"""Edit -> new content latency: locald `watch` vs a script that rebuilds and
restarts at the moment of the edit. See run.sh."""
import os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

locald, rounds = sys.argv[1], int(sys.argv[2])
BUILD = "sleep 1 && mkdir -p public && cp src/index.html public/index.html"
SERVE = "exec python3 -m http.server {port} --bind 127.0.0.1 --directory public"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def body(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=1) as r:
            return r.read().decode()
    except Exception:
        return None


def wait_for(port, want, limit=30):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if body(port) == want:
            return
        time.sleep(0.005)
    raise SystemExit(f"no answer with {want!r} on {port}")


def project():
    d = tempfile.mkdtemp(prefix="devloop-bench-")
    os.makedirs(f"{d}/src")
    with open(f"{d}/src/index.html", "w") as f:
        f.write("round -1")
    with open(f"{d}/.gitignore", "w") as f:
        f.write("public/\n")
    return d


def edit(d, i):
    with open(f"{d}/src/index.html", "w") as f:
        f.write(f"round {i}")
    return time.monotonic()


def bench_locald():
    d, port = project(), free_port()
    with open(f"{d}/locald.toml", "w") as f:
        f.write(
            f'[services.web]\nport = {port}\nwatch = true\nstop_timeout = "1s"\n'
            f'build = {{ command = "{BUILD}", inputs = ["src/**"] }}\n'
            f'command = "{SERVE.format(port=port)}"\n'
        )
    env = dict(os.environ, LOCALD_PROXY_PORT="0", XDG_STATE_HOME=d + "/.state")
    up = subprocess.Popen([locald, "up", d], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, "round -1")
        time.sleep(0.5)
        out = []
        for i in range(rounds):
            t0 = edit(d, i)
            wait_for(port, f"round {i}")
            out.append(time.monotonic() - t0)
            time.sleep(0.3)
        return out
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait()


def bench_script():
    d, port = project(), free_port()
    subprocess.run(BUILD, shell=True, cwd=d, check=True)
    srv = subprocess.Popen(SERVE.format(port=port), shell=True, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, "round -1")
        out = []
        for i in range(rounds):
            t0 = edit(d, i)
            subprocess.run(BUILD, shell=True, cwd=d, check=True)
            srv.terminate()
            srv.wait()
            srv = subprocess.Popen(SERVE.format(port=port), shell=True, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(port, f"round {i}")
            out.append(time.monotonic() - t0)
        return out
    finally:
        srv.terminate()
        srv.wait()


a = bench_locald()
b = bench_script()
ma, mb = statistics.median(a), statistics.median(b)
print(f"edit -> new content, one-second build, {rounds} rounds")
print(f"  locald watch:        median {ma * 1000:7.0f} ms  (min {min(a) * 1000:.0f}, max {max(a) * 1000:.0f})")
print(f"  rebuild by a script: median {mb * 1000:7.0f} ms  (min {min(b) * 1000:.0f}, max {max(b) * 1000:.0f})")
print(f"  ratio locald / script: {ma / mb:.2f}x")

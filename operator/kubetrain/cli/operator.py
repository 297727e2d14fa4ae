"""`kubetrain operator`: run the TrainingJob operator (kopf) in the foreground.

One active replica at a time: with --leader-elect (the chart's default) every replica first
takes a coordination.k8s.io Lease (controller/leader.py) and only the holder starts its
watches; a standby answers /healthz while it waits. (kopf peering is not leader election.)
SIGTERM stops the watches, lets reconcile passes in flight finish, releases the Lease, exits.
"""

from __future__ import annotations

import argparse
import http.server
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING

from kubetrain.controller import logs
from kubetrain.controller.builders import DEFAULT_TRAINER_IMAGE

ENV_LOG_FORMAT = "KUBETRAIN_LOG_FORMAT"  # the chart's logFormat

if TYPE_CHECKING:
    from kubetrain.controller.leader import LeaderElector


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("-n", "--namespace", action="append", metavar="NS",
                       help="serve TrainingJobs in this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace")
    parser.add_argument("--trainer-image", default=os.environ.get("KUBETRAIN_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
                        help="image of workers that set no spec.workers.image "
                             "(default: $KUBETRAIN_TRAINER_IMAGE or %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port; 0 disables")
    parser.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port; 0 disables")
    parser.add_argument("--bind-address", default="0.0.0.0", help="address of the metrics and health servers")
    parser.add_argument("--workers", type=int, default=8, help="jobs reconciled concurrently")
    parser.add_argument("--resync-seconds", type=float, default=60.0,
                        help="reconcile every job at least this often, events or not")
    parser.add_argument("--progress-seconds", type=float, default=10.0,
                        help="poll each running job's /progress this often (at most 15 s)")
    parser.add_argument("--backoff-base-seconds", type=float, default=10.0,
                        help="delay before the first restart after a failure; doubles per failure")
    parser.add_argument("--backoff-max-seconds", type=float, default=360.0, help="cap of the restart delay")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster, then $KUBECONFIG)")
    parser.add_argument("--log-format", choices=logs.FORMATS, default=os.environ.get(ENV_LOG_FORMAT) or "json",
                        help="json: one object per line (time, level, logger, message, ...); plain: text "
                             "(default: $KUBETRAIN_LOG_FORMAT, set by the chart's logFormat, or json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    parser.add_argument("--kube-api-qps", type=float, default=200.0,
                        help="client-side rate limit of API calls per second (token bucket); 0: none")
    parser.add_argument("--kube-api-burst", type=int, default=400, help="token bucket size (calls at once)")
    parser.add_argument("--leader-elect", action="store_true",
                        help="run only while holding a coordination.k8s.io Lease (for more than one replica)")
    parser.add_argument("--leader-election-namespace",
                        default=os.environ.get("POD_NAMESPACE") or "kubetrain-system",
                        help="namespace of the Lease (default: $POD_NAMESPACE or %(default)s)")
    parser.add_argument("--leader-election-id", default="kubetrain-operator", help="name of the Lease")
    parser.add_argument("--lease-duration-seconds", type=float, default=8.0,
                        help="a standby takes over after the leader has not renewed for this long")
    parser.add_argument("--renew-deadline-seconds", type=float, default=6.0,
                        help="a leader that cannot renew for this long stops (< lease duration)")
    parser.add_argument("--retry-period-seconds", type=float, default=2.0, help="renew / retry interval")
    policy = parser.add_argument_group(
        "pass-through policy (docs/security.md)",
        "what a TrainingJob may hand its pods; the chart sets these from admissionPolicy.*")
    policy.add_argument("--enforce-policy", action="store_true",
                        help="fail jobs (reason PolicyViolation, no pod) that name a ServiceAccount or Secret "
                             "outside the allow-lists below, or mount hostPath without --allow-host-path")
    policy.add_argument("--allowed-service-account", action="append", default=[], metavar="NAME",
                        help="spec.workers.serviceAccountName allowed (repeatable; '*': any)")
    policy.add_argument("--allowed-secret", action="append", default=[], metavar="NAME",
                        help="Secret allowed in envFrom, env valueFrom and secret/projected volumes "
                             "(repeatable; '*': any)")
    policy.add_argument("--allow-host-path", action="store_true", help="allow hostPath volumes")
    # Fault injection for the cluster tests (a pause before each API action): not for production.
    parser.add_argument("--test-action-delay", type=float, default=0.0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # Before kopf and the kubernetes client are imported: both read it at import time.
        os.environ["KUBECONFIG"] = args.kubeconfig
    _hide_kubernetes_client(args.kubeconfig)
    import kopf

    from kubetrain.controller import handlers
    from kubetrain.controller.policy import Policy
    from kubetrain.controller.reconcile import Settings

    if args.log_format not in logs.FORMATS:  # from the environment: argparse checks only the flag
        print(f"kubetrain operator: {ENV_LOG_FORMAT}={args.log_format!r}: expected one of "
              f"{', '.join(logs.FORMATS)}", file=sys.stderr)
        return 2
    configure_logging(args.log_format, args.verbose)
    rt = handlers.RUNTIME
    rt.settings = Settings(
        trainer_image=args.trainer_image,
        backoff_base_seconds=args.backoff_base_seconds,
        backoff_max_seconds=args.backoff_max_seconds,
        resync_seconds=args.resync_seconds,
        policy=Policy.of(args.allowed_service_account, args.allowed_secret, args.allow_host_path)
        if args.enforce_policy else None,
    )
    if rt.settings.policy is not None:
        p = rt.settings.policy
        logging.getLogger("kubetrain.operator").info(
            "pass-through policy enforced", extra={"serviceAccounts": sorted(p.service_accounts),
                                                  "secrets": sorted(p.secrets), "hostPath": p.host_path})
    rt.concurrency = max(1, args.workers)
    rt.kubeconfig = args.kubeconfig
    rt.action_delay = args.test_action_delay
    rt.progress_seconds = min(15.0, max(0.2, args.progress_seconds))
    rt.qps, rt.burst = args.kube_api_qps, max(1, args.kube_api_burst)
    rt.namespaces = tuple(args.namespace) if args.namespace else None
    if args.metrics_port:
        try:
            rt.metrics.serve(args.metrics_port, args.bind_address)
        except OSError as exc:
            print(f"kubetrain operator: cannot serve metrics on {args.bind_address}:{args.metrics_port}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
    liveness = f"http://{args.bind_address}:{args.health_port}/healthz" if args.health_port else None
    elector = _lead(args) if args.leader_elect else None
    try:
        kopf.run(
            standalone=True,  # no peering objects: one active replica, by leader election
            clusterwide=bool(args.all_namespaces),
            namespaces=args.namespace or (),
            liveness_endpoint=liveness,
        )
    finally:
        if elector is not None:
            elector.release()
    return 0


def _hide_kubernetes_client(kubeconfig: str | None) -> None:
    """kopf imports the `kubernetes` client library whenever it is installed (to recognise its
    objects and to log in with it); the operator needs neither: it logs kopf in itself and calls
    the API over urllib3 (controller/credentials.py). Hidden from this process, the library costs
    nothing (~30 MiB of RSS otherwise). Not hidden when the kubeconfig needs the library's loader
    (exec plugins, auth providers), nor when the credentials cannot be read (the real load says
    why later)."""
    from kubetrain.controller import credentials

    try:
        credentials.load(kubeconfig)
    except (credentials.Unsupported, OSError, ValueError, KeyError):
        return
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]  # `import` raises ImportError


def configure_logging(fmt: str, verbose: bool = False) -> None:
    """kopf's logging setup (levels, asyncio's logger muted), then our line format."""
    import kopf

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.PLAIN)
    logs.use(fmt)
    # kopf logs every handled watch event ("Handler 'pod_event' succeeded") at INFO: noise here,
    # the decisions are logged by the reconciler.
    for noisy in ("urllib3", "kubernetes", "kopf.objects", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("celpy").setLevel(logging.WARNING)  # validation's CEL interpreter traces every step


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server calls it by this name
        body = b'{"standby": true}'
        self.send_response(200 if self.path.startswith("/healthz") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def _lead(args: argparse.Namespace) -> LeaderElector:
    """Block until this replica holds the Lease (answering /healthz meanwhile); the returned
    elector renews it in the background and exits the process if it is ever lost."""
    from kubetrain.controller import handlers
    from kubetrain.controller.kubeio import Kube, load_client
    from kubetrain.controller.leader import LeaderElector
    from kubetrain.controller.ratelimit import TokenBucket

    server = None
    if args.health_port:
        server = http.server.ThreadingHTTPServer((args.bind_address, args.health_port), _Healthy)
        threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    kube = Kube(load_client(args.kubeconfig, pool=2), TokenBucket(args.kube_api_qps, args.kube_api_burst))
    elector = LeaderElector(
        kube, args.leader_election_namespace, args.leader_election_id,
        lease_seconds=args.lease_duration_seconds, renew_deadline_seconds=args.renew_deadline_seconds,
        retry_seconds=args.retry_period_seconds,
    )
    # Warm what the first passes need while waiting, so that a takeover starts at once.
    handlers.problems_of({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "spec": {}})
    elector.acquire()
    if server is not None:
        server.shutdown()
        server.server_close()  # kopf's liveness endpoint takes the port
    return elector

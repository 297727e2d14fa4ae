"""`kubetrain operator`: run the TrainingJob operator (kopf) in the foreground.

One active replica at a time (the Deployment uses strategy Recreate): kopf peering is not
leader election. SIGTERM stops the watches, lets reconcile passes in flight finish and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kubetrain.controller.builders import DEFAULT_TRAINER_IMAGE


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
    parser.add_argument("--log-format", choices=["json", "plain", "full"], default="json",
                        help="json: one structured object per line")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    # Fault injection for the cluster tests (a pause before each API action): not for production.
    parser.add_argument("--test-action-delay", type=float, default=0.0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # Before kopf and the kubernetes client are imported: both read it at import time.
        os.environ["KUBECONFIG"] = args.kubeconfig
    import kopf

    from kubetrain.controller import handlers
    from kubetrain.controller.reconcile import Settings

    formats = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}
    kopf.configure(verbose=args.verbose, log_format=formats[args.log_format])
    # kopf logs every handled watch event ("Handler 'pod_event' succeeded") at INFO: noise here,
    # the decisions are logged by the reconciler.
    for noisy in ("urllib3", "kubernetes", "kopf.objects", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    logging.getLogger("celpy").setLevel(logging.WARNING)  # validation's CEL interpreter traces every step
    rt = handlers.RUNTIME
    rt.settings = Settings(
        trainer_image=args.trainer_image,
        backoff_base_seconds=args.backoff_base_seconds,
        backoff_max_seconds=args.backoff_max_seconds,
        resync_seconds=args.resync_seconds,
    )
    rt.concurrency = max(1, args.workers)
    rt.kubeconfig = args.kubeconfig
    rt.action_delay = args.test_action_delay
    rt.progress_seconds = min(15.0, max(0.2, args.progress_seconds))
    if args.metrics_port:
        try:
            rt.metrics.serve(args.metrics_port, args.bind_address)
        except OSError as exc:
            print(f"kubetrain operator: cannot serve metrics on {args.bind_address}:{args.metrics_port}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
    liveness = f"http://{args.bind_address}:{args.health_port}/healthz" if args.health_port else None
    kopf.run(
        standalone=True,  # no peering objects: one replica by the Deployment's Recreate strategy
        clusterwide=bool(args.all_namespaces),
        namespaces=args.namespace or (),
        liveness_endpoint=liveness,
    )
    return 0

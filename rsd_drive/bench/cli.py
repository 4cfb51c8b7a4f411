"""``rsd-drive bench WHAT``: dispatch to rsd_drive.bench.<WHAT> (add_arguments / run)."""
import importlib

BENCHES = ('model', 'node', 'label', 'label_soak', 'train', 'served', 'soak', 'precision')


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest='bench', metavar='WHAT', required=True)
    for name in BENCHES:
        p = sub.add_parser(name)
        importlib.import_module(f'rsd_drive.bench.{name}').add_arguments(p)


def run(args) -> int:
    return importlib.import_module(f'rsd_drive.bench.{args.bench}').run(args)

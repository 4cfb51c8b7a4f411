"""Every ``rsd-drive`` subcommand keeps DDS on this host: run from a shell without the Makefile's
environment, the command line itself names config/fastdds_loopback.xml (shared memory sized for a
camera set, UDP on 127.0.0.1 only) before any node starts, and leaves a profile the user chose."""
import json
import os
import subprocess
import sys

from rsd_drive import config_file

PROBE = ('import json, os\n'
         'from rsd_drive.cli import main\n'
         'try:\n'
         '    main(["replay", "/nonexistent/bag"])\n'
         'except FileNotFoundError:\n'
         '    pass\n'
         'print(json.dumps({k: os.environ.get(k) for k in\n'
         '      ("FASTDDS_DEFAULT_PROFILES_FILE", "ROS_AUTOMATIC_DISCOVERY_RANGE")}))\n')


def run_probe(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ('FASTDDS_DEFAULT_PROFILES_FILE', 'ROS_AUTOMATIC_DISCOVERY_RANGE')}
    env.update(extra)
    out = subprocess.run([sys.executable, '-c', PROBE], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_command_line_confines_dds_when_nothing_is_set():
    got = run_probe({})
    assert got['FASTDDS_DEFAULT_PROFILES_FILE'] == str(config_file('fastdds_loopback.xml'))
    assert got['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'


def test_the_command_line_keeps_the_user_s_profile(tmp_path):
    mine = {'FASTDDS_DEFAULT_PROFILES_FILE': str(tmp_path / 'my_profile.xml'),
            'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}
    assert run_probe(mine) == mine

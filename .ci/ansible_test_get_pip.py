"""Offline stand-in for the pip bootstrap script ansible-test downloads from a host these machines cannot reach.

make sanity installs it as $HOME/.ansible/test/cache/get_pip_24_2.py (pip 24.2 is what ansible-core 2.19 asks for).
"""
import subprocess
import sys

wanted = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q"] + wanted)

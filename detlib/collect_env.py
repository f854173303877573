"""`python -m detlib.collect_env`: print the environment report to paste into a bug report."""

from detlib.utils.collect_env import collect_env_info

if __name__ == "__main__":
    print(collect_env_info())

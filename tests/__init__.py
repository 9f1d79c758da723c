"""Multi-process system tests: real ``twistd -n cas`` processes on 127.0.0.1, driven with the ``cas`` CLI."""

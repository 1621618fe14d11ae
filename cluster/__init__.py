"""bscluster: run a sharded cluster of beanstalkd-compatible bsnode processes.

``bscluster.config.load_config`` reads the config file that the supervisor
and ``bsclient.ClusterClient`` share; ``bscluster.cli`` is the command.
"""

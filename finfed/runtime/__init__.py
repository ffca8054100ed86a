"""The engine corner: the processes finfed starts for Flower (and Ray), how they are bound and stopped.

* ``processes``: stop a process tree or a set of processes, zombies counted as gone;
* ``engine_home``: the private Flower home of one local run (owner recorded, stale ones removed);
* ``guard``: a watchdog that stops a run's engine when the process that started it dies;
* ``loopback``: the environment that keeps Ray on 127.0.0.1 in a simulation.
"""

"""The ``loadgen`` command, one module per command group: ``app`` holds the root
group and how errors end, ``ca`` the ``loadgen ca`` group, and so on."""

"""Observability's pure logic: task events, the head's task store, and the views built on it.

:mod:`.events` says what an event is, buffers them on a node and folds them into
task records on the head; :mod:`.trace`, :mod:`.graph` and :mod:`.tables` turn
records (and other rows) into a timeline, a computation graph and CLI tables.
Nothing here opens a socket, starts a process or reads a clock it was not asked to.
"""

"""The Socket.IO binding (PROTOCOL.md section 7): Engine.IO v4 and
Socket.IO v5 at ``/socket.io/`` on the same port as ``/ws``, so unchanged
``socket.io-client`` apps talk to chatd's sessions.

Modules, bottom up:

* ``eio`` and ``sio``: the two packet codecs (pure functions, no I/O);
* ``transports``: the two Engine.IO transports as the engine sees them, and
  the registry's two framers (a WebSocket frame, a polling packet);
* ``engine``: one Engine.IO session (``EngineSocket``: heartbeats, the
  upgrade from polling to WebSocket) and the sid table (``EngineServer``);
* ``binding``: the Socket.IO layer on top, which is the chatd ``Binding`` of
  one ``Session`` per connection to the ``/`` namespace;
* ``http``: the twisted.web resource (polling, CORS, Engine.IO's JSON
  errors) that hands WebSocket upgrades to Autobahn (``websocket``).
"""

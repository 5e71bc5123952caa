"""slotserve on Ray Serve: N replicas (each a whole slotserve engine) behind one HTTP front.

Optional (`pip install slotserve[ray]`): only `slotserve --ray-replicas N` imports this package, and only
its launch, replica and router modules import Ray. The layout:

  routing.py    the routing table: a text prefix index per replica, in-flight counts, the policy (no Ray)
  router.py     Ray Serve's RequestRouter extension point, deciding with the routing table
  replica.py    the Serve deployment: one slotserve Service and its FastAPI app per replica process
  hints.py      what the front reads in a request (the prompt text, a cluster id_slot) and the slot ids
                in answers (no Ray)
  front.py      the HTTP front: forwards requests, maps cluster slot ids, fans /slots and /metrics out
  metrics.py    the replicas' /metrics summed, and the routing counters (no Ray)
  launch.py     Ray and Serve start-up and shutdown, the deployment's options
  server.py     `slotserve --ray-replicas N`: the front served while the cluster starts behind it
"""

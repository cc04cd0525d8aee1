"""Spend: prices x allocations, busy and idle, savings, budgets and alerts.

How the money is counted (the page and the admin repeat it):

* A GPU-hour's price comes from ``PriceRate``: the node's own rate where one is in effect,
  else the fleet rate for the GPU model; a rate applies from midnight of its
  ``effective_from`` day in the billing time zone. Only rates in the billing currency count.
* An *allocation* is an interval in which an instance holds a GPU or a MIG device, rebuilt
  from ``InstanceEvent``: states starting, ready and stopping hold the device, sleeping too
  unless ``FLEET_COST_SLEEPING_HOLDS_GPU`` is off (``fleet.states.gpu_holding_states``).
  A MIG device is worth slices/7 of its GPU; instances sharing a device at the same moment
  split it equally.
* spend = GPU-hours x share x price, split wherever the price changes. Capacity that is up
  (its GPU reported) but held by nothing is the *unallocated* line.
* Money stays ``Decimal`` at 34 significant digits from price to total and is rounded to
  cents (half up) only when shown; team shares are rounded so they add up exactly.
"""

// The "Add a host" page: lists the hosts that register with the join token just made, as
// they register, from the panel's WebSocket. A file, not an inline script: the content
// security policy runs only scripts from the panel's own origin.
(function () {
  const table = document.getElementById("joined");
  const body = table.querySelector("tbody");
  const state = document.getElementById("live-state");
  const token = Number(table.dataset.joinToken);
  let delay = 1000;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/fleet/`);
    socket.onopen = () => { state.textContent = "live"; delay = 1000; };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.kind !== "node" || event.join_token !== token) return;
      body.querySelector(".waiting")?.remove();
      const row = body.insertRow();
      row.insertCell().textContent = event.node;
      row.insertCell().textContent = event.status;
    };
    socket.onclose = () => {
      state.textContent = "disconnected; reconnecting…";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();

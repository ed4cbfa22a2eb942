// The dashboard's little JavaScript: confirm before an action, and the live log.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  const logs = document.getElementById("logs");
  if (logs) {
    const poll = async () => {
      try {
        const resp = await fetch(logs.dataset.src, { credentials: "same-origin" });
        if (resp.ok) {
          const body = await resp.json();
          const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
          logs.textContent = body.lines.join("\n") + "\n";  // text, never HTML
          if (atBottom) logs.scrollTop = logs.scrollHeight;
        }
      } catch (e) {
        // the node is restarting: try again on the next beat
      }
    };
    setInterval(poll, 2000);
  }
});

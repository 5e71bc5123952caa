// The page's start: ask /props who is serving (the key dialog on a 401, a wait while the model loads),
// then show the view the URL's hash names (#/chat or #/slots).

import { ApiError, apiKey, get, setApiKey, whenUnauthorized } from "./api.js";
import { ChatView } from "./chat.js";
import { $ } from "./dom.js";
import { SlotsView } from "./slots.js";

const chat = new ChatView();
const slots = new SlotsView();
let started = false;

function route() {
  const view = location.hash === "#/slots" ? "slots" : "chat";
  for (const name of ["chat", "slots"]) {
    $(`#view-${name}`).hidden = name !== view;
    $(`.tabs [data-view=${name}]`).classList.toggle("active", name === view);
  }
  if (view === "slots" && started) slots.open();
  else slots.close();
}

function askKey(error) {
  const dialog = $("#key-dialog");
  const message = $("#key-error");
  // the first ask is no error: say only why the key is needed; a key that was tried gets the server's 401
  message.hidden = !apiKey();
  message.textContent = error ? `${error}` : "";
  $("#key-input").value = "";
  if (!dialog.open) dialog.showModal();
}

$("#key-form").addEventListener("submit", () => {
  setApiKey($("#key-input").value);
  boot();
});
$("#key-button").addEventListener("click", () => askKey(null));
whenUnauthorized((err) => askKey(err));

async function boot() {
  const info = $("#model-info");
  let props;
  try {
    props = await get("/props");
  } catch (e) {
    if (e instanceof ApiError && e.status === 503) { // the model is still loading
      info.textContent = "loading model…";
      setTimeout(boot, 1000);
    } else {
      info.textContent = e.status === 401 ? "API key needed" : String(e); // a 401 has opened the key dialog
    }
    return;
  }
  $("#key-button").hidden = !apiKey();
  const settings = props.default_generation_settings ?? {};
  const name = (props.model_alias || props.model_path || "model").split("/").pop();
  info.textContent = `${name} · n_ctx ${settings.n_ctx} · ${props.total_slots} slots`;
  info.title = props.model_path ?? "";
  chat.showDefaults(settings.params);
  started = true;
  route();
}

window.addEventListener("hashchange", route);
route();
boot();

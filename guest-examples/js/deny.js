// `deny` in JavaScript: vetoes `vm.delete` and `vm.stop` on protected VMs.
//
// Settings (the `[settings]` table of `deny.toml`): `protected`, a list of VM
// ids. Exports are the `hook` world's functions; a thrown value becomes the
// `err` of the result (jco's convention for `result<_, string>`). The world's
// import `log(level, message)` is a global function under the QuickJS backend.

let protectedIds = new Set();

export function setup(settings) {
  let config;
  try {
    config = JSON.parse(settings);
  } catch (e) {
    throw `settings: not JSON: ${e.message}`;
  }
  const ids = config.protected;
  if (!Array.isArray(ids) || !ids.every((id) => typeof id === "string")) {
    throw "settings: `protected` must be a list of VM ids, e.g. protected = [\"0a9b…\"]";
  }
  const unknown = Object.keys(config).filter((k) => k !== "protected");
  if (unknown.length > 0) {
    throw `settings: unknown field(s) ${unknown.join(", ")}; expected \`protected\``;
  }
  protectedIds = new Set(ids);
  return { methods: ["vm.delete", "vm.stop"], phases: ["pre"] };
}

export function handle(event) {
  let payload;
  try {
    payload = JSON.parse(event.payload);
  } catch (e) {
    throw `event ${event.callId}: payload is not valid JSON: ${e.message}`;
  }
  const id = payload?.params?.id;
  if (typeof id !== "string" || !protectedIds.has(id)) {
    return { deliveries: [], deny: undefined };
  }
  log("info", `refusing ${event.method} on protected VM ${id}`);
  return {
    deliveries: [],
    deny: `VM ${id} is protected: ${event.method} refused by the deny hook`,
  };
}

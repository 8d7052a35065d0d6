// `deny` in AssemblyScript, a WASI command hook: vetoes `vm.delete` and
// `vm.stop` on the VMs listed in its settings (`protected`).
//
// The command ABI: the event arrives as JSON on stdin, the settings as JSON
// in the WASMHOOKS_SETTINGS environment variable, and the outcome goes out as
// JSON on stdout (nothing at all lets the event go). The subscription is in
// `deny.toml`'s `[subscription]` table. WASI comes from
// @assemblyscript/wasi-shim, JSON parsing from assemblyscript-json.
import { JSON } from "assemblyscript-json/assembly";

// Allocate once before the first WASI call. The WASI adapter takes a page of
// memory for itself on that call; AssemblyScript's allocator, set up on the
// first allocation, claims all memory present at that moment, so it must be
// set up first.
heap.free(heap.alloc(16));

function main(): void {
  const settings = JSON.parse(
    process.env.has("WASMHOOKS_SETTINGS") ? process.env.get("WASMHOOKS_SETTINGS") : "{}",
  );
  if (!settings.isObj) return fail("settings: not a JSON object");
  const list = (<JSON.Obj>settings).getArr("protected");
  if (list == null) return fail("settings: `protected` (a list of VM ids) is required");
  const protectedIds = new Set<string>();
  const items = list.valueOf();
  for (let i = 0; i < items.length; i++) {
    if (!items[i].isString) return fail("settings: `protected` must list VM ids (strings)");
    protectedIds.add((<JSON.Str>items[i]).valueOf());
  }

  const event = JSON.parse(readStdin());
  if (!event.isObj) return fail("the event on stdin is not a JSON object");
  const method = (<JSON.Obj>event).getString("method");
  const payload = (<JSON.Obj>event).getObj("payload");
  if (method == null || payload == null) return fail("the event lacks `method` or `payload`");
  const params = payload.getObj("params");
  if (params == null) return;
  const id = params.getString("id");
  if (id == null || !protectedIds.has(id.valueOf())) return;

  const reason = "VM " + id.valueOf() + " is protected: " + method.valueOf() + " refused by the deny hook";
  process.stdout.write('{"deny":' + quote(reason) + "}");
}

/// Reports a failure the command-ABI way: `{"error": message}` on stdout.
function fail(message: string): void {
  process.stdout.write('{"error":' + quote(message) + "}");
}

function readStdin(): string {
  const chunks = new Array<Uint8Array>();
  let total = 0;
  while (true) {
    const buffer = new ArrayBuffer(4096);
    const n = process.stdin.read(buffer);
    if (n <= 0) break;
    chunks.push(Uint8Array.wrap(buffer, 0, n));
    total += n;
  }
  const all = new Uint8Array(total);
  let at = 0;
  for (let i = 0; i < chunks.length; i++) {
    all.set(chunks[i], at);
    at += chunks[i].length;
  }
  return String.UTF8.decode(all.buffer);
}

/// A JSON string literal.
function quote(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c == 0x22) out += '\\"';
    else if (c == 0x5c) out += "\\\\";
    else if (c < 0x20) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += String.fromCharCode(c);
  }
  return out + '"';
}

// Top-level code runs in the `_start` export that asc generates.
main();

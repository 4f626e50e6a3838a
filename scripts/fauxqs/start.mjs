// Starts fauxqs (the second SQS emulator, SQS_EMULATOR=fauxqs) for scripts/services-up.
// Usage: node start.mjs NPM_DIR PORT BIND_ADDRESS
//   NPM_DIR: where `npm ci` installed scripts/fauxqs/package-lock.json (holds node_modules/fauxqs).
// fauxqs's own CLI logs every request; this starts it without its logger. startFauxqs() always
// listens on 0.0.0.0 (its `host` option only names the host in queue URLs), so the one call it makes
// to net.Server#listen is given BIND_ADDRESS instead. Queue URLs then name the address the client
// used (http://127.0.0.1:PORT/000000000000/NAME).
import net from "node:net";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [npmDir, portArg, bind] = process.argv.slice(2);
const port = Number.parseInt(portArg ?? "", 10);
if (!npmDir || !Number.isInteger(port) || !bind) {
  console.error("usage: node start.mjs NPM_DIR PORT BIND_ADDRESS");
  process.exit(64);
}

const listen = net.Server.prototype.listen;
let rebound = false;
net.Server.prototype.listen = function (...args) {
  const [options] = args;
  if (options && typeof options === "object" && options.host === "0.0.0.0") {
    args[0] = { ...options, host: bind };
    rebound = true;
  }
  return listen.apply(this, args);
};

const entry = pathToFileURL(join(npmDir, "node_modules", "fauxqs", "dist", "app.js")).href;
const { startFauxqs } = await import(entry);
const server = await startFauxqs({ logger: false, port });
net.Server.prototype.listen = listen;
console.log(
  `fauxqs listening on ${rebound ? bind : "0.0.0.0"}:${server.port} (node ${process.version}, pid ${process.pid})`,
);

let stopping = false;
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    server.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
}

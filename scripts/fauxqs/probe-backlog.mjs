// Why fauxqs slows down as its queue gets deep: a probe of its queue alone, without HTTP.
// Usage: node probe-backlog.mjs NPM_DIR [--deque]
//   NPM_DIR: where scripts/services-up installed fauxqs (~/.cache/accrual/fauxqs).
//   --deque: the same, with the queue's message array replaced by a deque whose shift() is O(1).
// For each depth it fills one fauxqs SqsQueue with that many 200-byte messages, then receives and
// deletes 20,000 of them ten at a time as the listener does, topping the queue up after each
// receive so the depth stays put, and prints the CPU time per message received.
// fauxqs 2.4.1 keeps a standard queue's messages in a JavaScript array and takes each received
// message off its front with Array.prototype.shift(), which copies the rest of the array once it
// is large: the cost of a receive grows with the depth. Run with and without --deque to see it.
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [npmDir, ...flags] = process.argv.slice(2);
if (!npmDir) {
  console.error("usage: node probe-backlog.mjs NPM_DIR [--deque]");
  process.exit(64);
}
const deque = flags.includes("--deque");
const store = pathToFileURL(join(npmDir, "node_modules", "fauxqs", "dist", "sqs", "sqsStore.js")).href;
const { SqsQueue, SqsStore } = await import(store);

/** A FIFO with O(1) shift, with what SqsQueue uses of an array: push, shift, length, iteration. */
class Deque {
  items = [];
  head = 0;
  get length() {
    return this.items.length - this.head;
  }
  push(...values) {
    return this.items.push(...values) - this.head;
  }
  shift() {
    if (this.head >= this.items.length) return undefined;
    const value = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head > 65_536 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return value;
  }
  *[Symbol.iterator]() {
    for (let i = this.head; i < this.items.length; i++) yield this.items[i];
  }
}

const body = JSON.stringify({ v: 1, point: "x".repeat(180) });
const RECEIVED = 20_000;
console.log(`fauxqs queue probe (${deque ? "deque" : "fauxqs's array"}), node ${process.version}`);
console.log("depth      cpu µs per message received and deleted");
for (const depth of [1_000, 10_000, 50_000, 100_000, 200_000, 400_000]) {
  const queue = new SqsQueue("probe", "http://127.0.0.1/000000000000/probe", "arn:aws:sqs:us-east-1:000000000000:probe", {});
  if (deque) queue.messages = new Deque();
  for (let i = 0; i < depth; i++) queue.enqueue(SqsStore.createMessage(body));
  const before = process.cpuUsage();
  let received = 0;
  while (received < RECEIVED) {
    const batch = queue.dequeue(10);
    for (const message of batch) queue.deleteMessage(message.ReceiptHandle);
    received += batch.length;
    for (let i = 0; i < batch.length; i++) queue.enqueue(SqsStore.createMessage(body));
  }
  const used = process.cpuUsage(before);
  const perMessage = (used.user + used.system) / received;
  console.log(`${String(depth).padEnd(10)} ${perMessage.toFixed(1)}`);
}

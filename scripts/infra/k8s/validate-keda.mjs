// Validates the KEDA objects (keda.sh/*) of rendered kustomize output against KEDA's published
// models, @kubernetes-models/keda (generated from KEDA's Go API types):
//   1. each object through the model's own JSON-schema validation (types, enums, required
//      fields, e.g. podIdentity.provider, minReplicaCount an integer, metadata values strings);
//   2. each object as a TypeScript literal of the model's interface, compiled with tsc: the
//      schemas allow unknown fields, TypeScript's excess-property check does not, so a misspelt
//      field (`minReplicas`, `authenticatonRef`) fails here as `kubectl apply` would fail on the
//      CRD's structural schema;
//   3. what neither model can see: trigger metadata is a map of strings that KEDA reads by name,
//      so a metrics-api trigger may only use the parameters KEDA's scaler documents, with a url,
//      a valueLocation and a targetValue that is a positive number; a fallback has a
//      failureThreshold and replicas of at least 1, replicas within the replica counts, and only
//      triggers it applies to (AverageValue metrics); and the names an object refers to (scale
//      target, TriggerAuthentication, the Service a metrics-api url names) must be in the same
//      render.
//
// Usage: node validate-keda.mjs NPM_DIR NAME=RENDERED.yaml...
//   NPM_DIR: where package-lock.json was installed (scripts/infra/check-k8s does it).
// Prints one line per problem, `keda: NAME: Kind/name: problem`, and exits 1 if there was any.
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { join, normalize } from "node:path";
import { pathToFileURL } from "node:url";
import { spawnSync } from "node:child_process";

const [npmDir, ...renders] = process.argv.slice(2);
if (!npmDir || renders.length === 0) {
  console.error("usage: node validate-keda.mjs NPM_DIR NAME=RENDERED.yaml...");
  process.exit(2);
}
const modules = join(npmDir, "node_modules");
const load = (path) => import(pathToFileURL(join(modules, path)).href);
const YAML = await load("yaml/dist/index.js");
const keda = await load("@kubernetes-models/keda/keda.sh/v1alpha1/index.js");

// KEDA's kinds in group keda.sh we know how to check, with the model's interface for tsc.
const KINDS = {
  ScaledObject: "IScaledObject",
  ScaledJob: "IScaledJob",
  TriggerAuthentication: "ITriggerAuthentication",
  ClusterTriggerAuthentication: "IClusterTriggerAuthentication",
};

// Trigger metadata parameters of KEDA's metrics-api scaler (keda.sh/docs/2.17/scalers/metrics-api/,
// the keda:"name=…,order=triggerMetadata" fields of pkg/scalers/metrics_api_scaler.go and of the
// authentication config it embeds), the only trigger type used here. KEDA ignores a metadata key
// it does not know: a typo of targetValue would leave the trigger without one, and a typo of an
// optional key would silently keep its default. `format` is KEDA 2.14's (2.13 reads JSON only and
// ignores the key). Secrets (apiKey, token, username, password, ca, cert, key) belong in a
// TriggerAuthentication, not here.
const TRIGGER_METADATA = {
  "metrics-api": new Set([
    "url", "format", "valueLocation", "targetValue", "activationTargetValue", "unsafeSsl",
    "aggregateFromKubeServiceEndpoints", "aggregationType", "authMode", "method", "keyParamName",
  ]),
};
const METRICS_API_ENUMS = {
  format: ["json", "xml", "yaml", "prometheus"],
  aggregationType: ["average", "sum", "max", "min"],
  unsafeSsl: ["true", "false"],
  aggregateFromKubeServiceEndpoints: ["true", "false"],
  method: ["header", "query"],
};
// A decimal number, as KEDA's float parsing of targetValue takes it (no units, no exponent).
const NUMBER = /^[0-9]+(\.[0-9]+)?$/;
// Triggers whose metric is never an AverageValue: KEDA ignores a fallback for them.
const NO_FALLBACK_TYPES = new Set(["cpu", "memory"]);

const ORIGIN = "config.kubernetes.io/origin";
const problems = [];
const objects = []; // { render, kind, name, namespace, body }
const byRender = {}; // render -> [{ kind, name, namespace, source, ports }] of every object (for references)

for (const arg of renders) {
  const eq = arg.indexOf("=");
  const [render, file] = eq > 0 ? [arg.slice(0, eq), arg.slice(eq + 1)] : [arg, arg];
  byRender[render] = [];
  for (const doc of YAML.parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length) {
      problems.push(`${render}: not YAML: ${doc.errors[0].message}`);
      continue;
    }
    const body = doc.toJS();
    if (!body) continue;
    // kustomize's origin annotation (check-k8s switches it on): the source file, then dropped.
    const annotations = body.metadata?.annotations ?? {};
    const origin = YAML.parse(annotations[ORIGIN] ?? "") ?? {};
    delete annotations[ORIGIN];
    if (body.metadata?.annotations && !Object.keys(annotations).length) delete body.metadata.annotations;
    const from = origin.path ?? origin.configuredIn;
    const source = from ? normalize(join(render, from)) : undefined;
    const ref = { kind: body.kind, name: body.metadata?.name, namespace: body.metadata?.namespace, source };
    if (body.kind === "Service") ref.ports = (body.spec?.ports ?? []).map((p) => p.port);
    byRender[render].push(ref);
    if (String(body.apiVersion).startsWith("keda.sh/")) objects.push({ render, ...ref, body });
  }
}

const label = (o) => `${o.render}: ${o.kind}/${o.name}${o.source ? ` (${o.source})` : ""}`;
const find = (render, kind, name, namespace) =>
  byRender[render].find((r) => r.kind === kind && r.name === name && r.namespace === namespace);
const has = (render, kind, name, namespace) => find(render, kind, name, namespace) !== undefined;
const isWholeNumber = (v) => Number.isInteger(v);

// A metrics-api url that names a cluster Service (`name.namespace`, `name.namespace.svc`,
// `name.namespace.svc.<cluster domain>`) must name one in this render, on one of its ports. KEDA's
// operator runs in its own namespace (keda), so a bare `name` would be looked up there.
function serviceUrlProblems(o, i, raw) {
  let url;
  try {
    url = new URL(raw);
  } catch {
    return [`triggers[${i}].metadata.url ${JSON.stringify(raw)} is not a URL`];
  }
  if (!["http:", "https:"].includes(url.protocol)) return [`triggers[${i}].metadata.url must be http or https`];
  const labels = url.hostname.split(".");
  if (labels.length === 1 && !/^[0-9]/.test(url.hostname)) {
    return [
      `triggers[${i}].metadata.url host ${url.hostname} has no namespace: KEDA's operator would resolve it in its own namespace, not ${o.namespace}`,
    ];
  }
  if (labels.length === 2 || labels[2] === "svc") {
    const [name, namespace] = labels;
    const service = find(o.render, "Service", name, namespace);
    if (!service) {
      return [`triggers[${i}].metadata.url names Service/${name} in namespace ${namespace}, which is not in this render`];
    }
    const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
    if (!service.ports.includes(port)) {
      return [`triggers[${i}].metadata.url asks port ${port}, which Service/${name} does not expose (${service.ports.join(", ")})`];
    }
  }
  return [];
}

// 1. The models' JSON schemas.
for (const o of objects) {
  const Model = keda[o.kind];
  if (!KINDS[o.kind] || !Model || o.body.apiVersion !== "keda.sh/v1alpha1") {
    problems.push(`${label(o)}: ${o.body.apiVersion} ${o.kind} is not a KEDA kind this check knows`);
    continue;
  }
  try {
    new Model(o.body).validate();
  } catch (e) {
    const details = (e.details ?? []).map((d) => `${d.instancePath || "/"} ${d.message}`);
    problems.push(`${label(o)}: ${details.length ? details.join("; ") : e.message}`);
  }
}

// 2. TypeScript's excess-property check against the models' interfaces.
const checkable = objects.filter((o) => KINDS[o.kind]);
if (checkable.length) {
  const dir = mkdtempSync(join(npmDir, ".check-"));
  try {
    const lines = [];
    for (const kind of new Set(checkable.map((o) => o.kind))) {
      lines.push(`import type { ${KINDS[kind]} } from "@kubernetes-models/keda/keda.sh/v1alpha1/${kind}";`);
    }
    const spans = []; // [first line, last line, object]
    checkable.forEach((o, i) => {
      const first = lines.length + 1;
      const literal = JSON.stringify(o.body, null, 2).split("\n");
      lines.push(`export const o${i}: ${KINDS[o.kind]} = ${literal[0]}`, ...literal.slice(1));
      lines[lines.length - 1] += ";";
      spans.push([first, lines.length, o]);
    });
    writeFileSync(join(dir, "objects.ts"), lines.join("\n") + "\n");
    writeFileSync(
      join(dir, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          strict: true, noEmit: true, skipLibCheck: true, target: "es2022",
          module: "nodenext", moduleResolution: "nodenext", types: [],
        },
        files: ["objects.ts"],
      }),
    );
    const tsc = spawnSync(process.execPath, [join(modules, "typescript/bin/tsc"), "-p", dir, "--pretty", "false"], {
      encoding: "utf8",
    });
    if (tsc.error) throw tsc.error;
    if (tsc.status !== 0) {
      const out = `${tsc.stdout}${tsc.stderr}`.trim();
      let placed = 0;
      for (const line of out.split("\n")) {
        const m = /objects\.ts\((\d+),\d+\): error (TS\d+): (.*)/.exec(line);
        if (!m) continue;
        const span = spans.find(([a, b]) => +m[1] >= a && +m[1] <= b);
        const where = span ? label(span[2]) : "objects.ts";
        problems.push(`${where}: ${m[3]} (${m[2]}, against the model's TypeScript types)`);
        placed++;
      }
      if (!placed) problems.push(`tsc failed: ${out}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// 3. What the models cannot see.
for (const o of objects) {
  const spec = o.body.spec ?? {};
  if (o.kind === "ScaledObject") {
    const target = spec.scaleTargetRef ?? {};
    const kind = target.kind ?? "Deployment";
    if (!has(o.render, kind, target.name, o.namespace)) {
      problems.push(`${label(o)}: scaleTargetRef names ${kind}/${target.name}, which is not in this render`);
    }
  }
  for (const [i, trigger] of (spec.triggers ?? []).entries()) {
    const ref = trigger.authenticationRef;
    if (ref) {
      const kind = ref.kind ?? "TriggerAuthentication";
      const ns = kind === "ClusterTriggerAuthentication" ? undefined : o.namespace;
      if (!has(o.render, kind, ref.name, ns)) {
        problems.push(`${label(o)}: triggers[${i}].authenticationRef names ${kind}/${ref.name}, which is not in this render`);
      }
    }
    const allowed = TRIGGER_METADATA[trigger.type];
    if (!allowed) {
      problems.push(`${label(o)}: triggers[${i}] is of type ${trigger.type}, whose parameters this check does not know: add them to TRIGGER_METADATA`);
      continue;
    }
    const meta = trigger.metadata ?? {};
    for (const key of Object.keys(meta)) {
      if (!allowed.has(key)) {
        problems.push(`${label(o)}: triggers[${i}].metadata.${key} is not a parameter of KEDA's ${trigger.type} scaler`);
      }
    }
    if (trigger.type === "metrics-api") {
      if (!meta.url) problems.push(`${label(o)}: triggers[${i}] has no url`);
      else for (const p of serviceUrlProblems(o, i, meta.url)) problems.push(`${label(o)}: ${p}`);
      if (!meta.valueLocation) problems.push(`${label(o)}: triggers[${i}] has no valueLocation`);
      // KEDA refuses a metrics-api trigger whose targetValue is missing or 0.
      if (!("targetValue" in meta)) problems.push(`${label(o)}: triggers[${i}] has no targetValue`);
      for (const key of ["targetValue", "activationTargetValue"]) {
        if (key in meta && !NUMBER.test(meta[key])) {
          problems.push(`${label(o)}: triggers[${i}].metadata.${key} must be a number, not ${JSON.stringify(meta[key])}`);
        }
      }
      if (NUMBER.test(meta.targetValue ?? "") && Number(meta.targetValue) <= 0) {
        problems.push(`${label(o)}: triggers[${i}].metadata.targetValue must be above 0`);
      }
      for (const [key, values] of Object.entries(METRICS_API_ENUMS)) {
        if (key in meta && !values.includes(meta[key])) {
          problems.push(`${label(o)}: triggers[${i}].metadata.${key} must be one of ${values.join(", ")}, not ${JSON.stringify(meta[key])}`);
        }
      }
    }
  }
  // A fallback: KEDA reports targetValue x replicas to the HPA once a trigger has failed
  // failureThreshold times in a row, which holds `replicas` only for AverageValue metrics.
  const fallback = spec.fallback;
  if (o.kind === "ScaledObject" && fallback) {
    if (!isWholeNumber(fallback.failureThreshold) || fallback.failureThreshold < 1) {
      problems.push(`${label(o)}: fallback.failureThreshold must be a whole number of at least 1, not ${JSON.stringify(fallback.failureThreshold)}`);
    }
    if (!isWholeNumber(fallback.replicas) || fallback.replicas < 1) {
      problems.push(`${label(o)}: fallback.replicas must be a whole number of at least 1, not ${JSON.stringify(fallback.replicas)}`);
    } else {
      const min = spec.minReplicaCount ?? 0;
      const max = spec.maxReplicaCount ?? 100;
      if (fallback.replicas < min || fallback.replicas > max) {
        problems.push(`${label(o)}: fallback.replicas ${fallback.replicas} is outside minReplicaCount ${min} and maxReplicaCount ${max} (the HPA would clamp it)`);
      }
    }
    for (const [i, trigger] of (spec.triggers ?? []).entries()) {
      if (NO_FALLBACK_TYPES.has(trigger.type) || (trigger.metricType ?? "AverageValue") !== "AverageValue") {
        problems.push(`${label(o)}: triggers[${i}] (${trigger.type}, ${trigger.metricType ?? "its default metric type"}) is not an AverageValue metric: KEDA applies no fallback to it`);
      }
    }
  }
  const identity = spec.podIdentity;
  if (identity?.roleArn && identity?.identityOwner) {
    problems.push(`${label(o)}: podIdentity.roleArn and podIdentity.identityOwner are mutually exclusive (KEDA)`);
  }
}

for (const p of problems) console.log(`keda: ${p}`);
if (problems.length) process.exit(1);
const version = JSON.parse(readFileSync(join(modules, "@kubernetes-models/keda/package.json"), "utf8")).version;
console.log(`keda: ${objects.length} KEDA objects valid against @kubernetes-models/keda ${version} (schemas and types)`);

// A tiny JSON Schema checker for the report schema (docs/report-schema.json): type (with
// 'integer' and unions), const, enum, pattern, required, properties, additionalProperties,
// items and local $refs. Returns every mismatch as "path: problem"; [] means valid.

type Schema = Record<string, unknown>;

function typeOk(v: unknown, t: string): boolean {
  switch (t) {
    case 'null':
      return v === null;
    case 'array':
      return Array.isArray(v);
    case 'object':
      return typeof v === 'object' && v !== null && !Array.isArray(v);
    case 'integer':
      return Number.isInteger(v);
    case 'number':
      return typeof v === 'number' && Number.isFinite(v);
    default:
      return typeof v === t;
  }
}

export function validate(root: Schema, value: unknown): string[] {
  const errors: string[] = [];
  const walk = (s: Schema, v: unknown, path: string): void => {
    if (typeof s.$ref === 'string') {
      const name = s.$ref.replace(/^#\/\$defs\//, '');
      const def = (root.$defs as Record<string, Schema>)[name];
      if (!def) return void errors.push(`${path}: unknown $ref ${s.$ref}`);
      return walk(def, v, path);
    }
    if (s.type !== undefined) {
      const types = Array.isArray(s.type) ? (s.type as string[]) : [s.type as string];
      if (!types.some((t) => typeOk(v, t))) return void errors.push(`${path}: expected ${types.join(' or ')}, got ${JSON.stringify(v)?.slice(0, 60)}`);
    }
    if ('const' in s && v !== s.const) errors.push(`${path}: expected ${JSON.stringify(s.const)}`);
    if (Array.isArray(s.enum) && !s.enum.includes(v)) errors.push(`${path}: ${JSON.stringify(v)} is not one of ${JSON.stringify(s.enum)}`);
    if (typeof s.pattern === 'string' && typeof v === 'string' && !new RegExp(s.pattern).test(v)) errors.push(`${path}: '${v}' does not match ${s.pattern}`);
    if (typeOk(v, 'object')) {
      const o = v as Record<string, unknown>;
      for (const r of (s.required as string[] | undefined) ?? []) if (!(r in o)) errors.push(`${path}: missing '${r}'`);
      const props = (s.properties as Record<string, Schema> | undefined) ?? {};
      for (const [key, val] of Object.entries(o)) {
        if (key in props) walk(props[key], val, `${path}.${key}`);
        else if (s.additionalProperties === false) errors.push(`${path}: unexpected property '${key}'`);
        else if (typeof s.additionalProperties === 'object') walk(s.additionalProperties as Schema, val, `${path}.${key}`);
      }
    }
    if (Array.isArray(v) && typeof s.items === 'object') v.forEach((x, i) => walk(s.items as Schema, x, `${path}[${i}]`));
  };
  walk(root, value, '$');
  return errors;
}

// Declarative struct layouts: named Int32 fields and arrays at fixed word offsets.
// Every layer (and every driver, for its own state) describes its arena structs this way,
// so a struct is just a base word offset and field access is `i32[base + L.field]`.

export type FieldSpec = Record<string, number>; // field name -> word count (1 = scalar, N = array)

export type Struct<F extends FieldSpec> = { readonly [K in keyof F]: number } & {
  /** total words, rounded up to an even count so Float64 views stay aligned */
  readonly $size: number;
  readonly $name: string;
  readonly $fields: Readonly<F>;
};

export function defineStruct<F extends FieldSpec>(name: string, fields: F): Struct<F> {
  const out: Record<string, unknown> = { $name: name, $fields: Object.freeze({ ...fields }) };
  let off = 0;
  for (const [field, words] of Object.entries(fields)) {
    if (field.startsWith('$')) throw new Error(`defineStruct(${name}): field '${field}' may not start with '$'`);
    if (!Number.isInteger(words) || words < 1) {
      throw new Error(`defineStruct(${name}): field '${field}' needs a whole number of words >= 1, got ${words}`);
    }
    out[field] = off;
    off += words;
  }
  out.$size = off + (off & 1);
  // A copy: the object built field by field and then frozen would stay in V8's dictionary
  // mode, and hot paths read these offsets on every access.
  return Object.freeze({ ...out }) as Struct<F>;
}

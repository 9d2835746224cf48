// The type of a value after a JSON round trip, for the results breakwater records and replays
// (idempotent(), ctx.phase): what a later call gets back is JSON.parse(JSON.stringify(value)),
// and typing it as the original type let compiled code call a method a replay no longer has.

/**
 * The type `JSON.parse(JSON.stringify(value))` gives back for a `value` of type `T`, as
 * breakwater records it (see `idempotent()`):
 * - what `toJSON` returns stands for the value (a `Date` becomes `string`);
 * - strings, numbers, booleans and null are kept, and so is a top-level `undefined`;
 * - in an object, members that are functions or symbols (class methods included) and symbol
 *   keys are dropped, and a member that may be `undefined` becomes optional (JSON leaves it out);
 * - arrays and tuples keep their shape, each element mapped;
 * - a function, symbol or BigInt alone has no JSON form: `never` (breakwater refuses it).
 *
 * A plain JSON shape maps to itself: `Jsonified<{ id: string; n: number }>` is
 * `{ id: string; n: number }`. `any` stays `any` and `unknown` stays `unknown`.
 *
 * @example
 * ```ts
 * class Money { constructor(readonly cents: number, readonly at: Date) {} format() { return '' } }
 * type Replayed = Jsonified<Money> // { readonly cents: number; readonly at: string }
 * ```
 */
export type Jsonified<T> = 0 extends 1 & T ? T : unknown extends T ? T : JsonifiedValue<T>

// Distributes over unions (`Date | null` -> `string | null`).
type JsonifiedValue<T> = T extends { toJSON(...args: never): infer R }
  ? JsonifiedValue<R>
  : T extends string | number | boolean | null | undefined
    ? T
    : T extends bigint | symbol | ((...args: never) => unknown)
      ? never
      : T extends readonly unknown[]
        ? { [K in keyof T]: JsonifiedValue<T[K]> }
        : T extends object
          ? JsonifiedObject<T>
          : T

/** Whether a member has no JSON form at all (it is left out of its object). */
type Dropped<V> = [JsonifiedValue<Exclude<V, undefined>>] extends [never] ? true : false

/** The keys that stay required: string or number keys whose value is never undefined. */
type KeptKeys<T> = {
  [K in keyof T]-?: K extends symbol
    ? never
    : undefined extends T[K]
      ? never
      : Dropped<T[K]> extends true
        ? never
        : K
}[keyof T]

/** The keys that may be left out: those whose value may be undefined. */
type OmittableKeys<T> = {
  [K in keyof T]-?: K extends symbol
    ? never
    : undefined extends T[K]
      ? Dropped<T[K]> extends true
        ? never
        : K
      : never
}[keyof T]

// `as` keeps the mapping homomorphic, so readonly members stay readonly; the outer mapping
// flattens the intersection, so a plain object's type reads as itself.
type JsonifiedObject<T> = Flatten<
  { [K in keyof T as K extends KeptKeys<T> ? K : never]: JsonifiedValue<T[K]> } & {
    [K in keyof T as K extends OmittableKeys<T> ? K : never]?: JsonifiedValue<
      Exclude<T[K], undefined>
    >
  }
>

type Flatten<T> = { [K in keyof T]: T[K] }

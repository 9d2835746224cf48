// The options check of breakwater/saga: the core one, with a reply's payload kept as data.
import { checkOptionKeys } from '../core/validate.js'

/**
 * The one check of every options object of breakwater/saga (a declaration, a step, its retry,
 * a function's options): core's {@link checkOptionKeys} (unknown keys and null options refused
 * with `INVALID_OPTION` naming `${prefix}.${key}`; only `undefined` means the default). `data`
 * names the fields that hold the caller's JSON rather than an option (a reply's `payload`),
 * where null is a value like any other.
 *
 * @example
 * ```ts
 * checkSagaOptions('options', options, startOptions)
 * ```
 */
export function checkSagaOptions(
  prefix: string,
  options: object,
  known: ReadonlySet<string>,
  data?: ReadonlySet<string>,
): void {
  checkOptionKeys(prefix, options, known, { data })
}

// The options check of breakwater/saga: the core one, with a reply's payload kept as data.
import { InvalidOptionError } from '../core/errors.js'
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

/**
 * Refuses a hole in a declaration's array (`[a, , b]`, a doubled comma) with `INVALID_OPTION`
 * naming `${at}[i]`. `Array.prototype.map` and `some` skip holes, so a hole went through a
 * declaration's checks unseen: a saga was defined with an empty step (every instance started
 * was then stored with a null step no worker could read) and a flow failed with a bare
 * TypeError or kept an undefined failure event.
 *
 * @example
 * ```ts
 * refuseHoles('saga "order".steps', steps)
 * ```
 */
export function refuseHoles(at: string, list: readonly unknown[]): void {
  for (let i = 0; i < list.length; i++) {
    if (!(i in list)) {
      throw new InvalidOptionError(
        `${at}[${i}]`,
        'an entry (the array has a hole here: a doubled comma?)',
        undefined,
      )
    }
  }
}

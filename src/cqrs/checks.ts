// Checks shared by breakwater/cqrs: its option bags (known keys, no null). Event data and
// metadata go through core's jsonTextOf, which refuses what would not read back as appended.
import { checkOptionKeys as coreCheckOptionKeys } from '../core/validate.js'

/**
 * @internal The core {@link coreCheckOptionKeys} (known keys, no null), naming a null option by
 * its bare key when `prefix` is `'options'` (`maxAttempts`, but `snapshots.every`), as the
 * option's own check names it.
 */
export function checkOptionKeys(prefix: string, options: object, known: ReadonlySet<string>): void {
  coreCheckOptionKeys(prefix, options, known, { bareNames: prefix === 'options' })
}

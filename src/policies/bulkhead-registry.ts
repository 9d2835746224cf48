import type { Clock } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkClock, checkKnownOptions, checkObject, optionKeys } from '../core/validate.js'
import { type Bulkhead, type BulkheadOptions, BulkheadPolicy, bulkheadOptions } from './bulkhead.js'
import { optional } from './options.js'

/** Options shared by every bulkhead of a {@link createBulkheads} registry. */
export interface BulkheadRegistryOptions {
  /**
   * Time source for the queue timeouts of bulkheads that do not set their own.
   * @default systemClock
   */
  readonly clock?: Clock | undefined
}

/** Named bulkheads, one per downstream or resource pool; see {@link createBulkheads}. */
export interface BulkheadRegistry<K extends string = string> {
  /** The bulkhead called `name`; throws `InvalidOptionError` for a name that was not defined. */
  get(name: K): Bulkhead
  /** True when a bulkhead called `name` exists (narrows a string read from config). */
  has(name: string): name is K
  /** The defined names, in definition order. */
  readonly names: readonly K[]
}

/**
 * The option keys `createBulkheads` takes as its second argument (internal: not exported from
 * the package root).
 */
export const registryOptions = optionKeys<BulkheadRegistryOptions>({ clock: true })

/**
 * Creates one bulkhead per entry, so each downstream gets its own compartment and a slow one
 * cannot starve the others. Each bulkhead's `name` defaults to its key (for diagnostics and
 * metrics). Definitions are validated at once, naming the bad entry (`bulkheads.C.maxQueued`);
 * an unknown (misspelt) option is refused with `InvalidOptionError` (code `INVALID_OPTION`).
 *
 * @example
 * ```ts
 * import { createBulkheads } from 'breakwater'
 * const bulkheads = createBulkheads({
 *   payments: { maxConcurrent: 30 },
 *   search: { maxConcurrent: 10, maxQueued: 100, queueTimeoutMs: 250 },
 * })
 * await bulkheads.get('search').execute(() => fetch('http://search/?q=x'))
 * ```
 */
export function createBulkheads<const K extends string>(
  definitions: Readonly<Record<K, BulkheadOptions>>,
  options: BulkheadRegistryOptions = {},
): BulkheadRegistry<K> {
  checkObject('bulkheads', definitions)
  checkObject('bulkheads.options', options)
  checkKnownOptions('bulkheads.options', options, registryOptions)
  // Checked here, not only through each definition, so that a bad one is named as written.
  const clock = optional('bulkheads.options.clock', options.clock, undefined, checkClock)
  const byName = new Map<string, Bulkhead>()
  for (const name of Object.keys(definitions) as K[]) {
    const prefix = `bulkheads.${name}`
    checkObject(prefix, definitions[name])
    const definition: BulkheadOptions = definitions[name]
    // Misspelt keys are looked for in the definition as given: the copy below has known ones only.
    checkKnownOptions(prefix, definition, bulkheadOptions)
    // Each option is read off the definition, not spread ({ ...definition } keeps own keys
    // only): one made with Object.create(defaults) keeps its inherited options, as bulkhead()
    // and the other option readers read them. Every key is listed (-?), so a new option
    // cannot be left out of the copy.
    const withDefaults: { readonly [P in keyof BulkheadOptions]-?: BulkheadOptions[P] } = {
      maxConcurrent: definition.maxConcurrent,
      maxQueued: definition.maxQueued,
      queueTimeoutMs: definition.queueTimeoutMs,
      // Only a name left out becomes the key: null is refused by the bulkhead like any option.
      name: definition.name === undefined ? name : definition.name,
      clock: definition.clock === undefined ? clock : definition.clock,
    }
    byName.set(name, new BulkheadPolicy(withDefaults, prefix))
  }
  const names = Object.freeze([...byName.keys()] as K[])
  return {
    get(name: K): Bulkhead {
      const found = byName.get(name)
      if (found === undefined) {
        // Quoted as JSON, so a name holding a quote or a comma reads as one name; a registry
        // built from a config that defines none (has() serves it) says so.
        const known =
          names.length === 0
            ? 'a name this registry defines (it defines none)'
            : `one of ${names.map((n) => JSON.stringify(n)).join(', ')}`
        throw new InvalidOptionError('bulkheads.get(name)', known, name)
      }
      return found
    },
    has(name: string): name is K {
      return byName.has(name)
    },
    names,
  }
}

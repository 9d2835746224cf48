import type { Clock } from '../core/clock.js'
import { InvalidOptionError } from '../core/errors.js'
import { checkObject, checkOptionKeys, optionKeys } from '../core/validate.js'
import { redactUrlValues, type SubscriberErrorEvent } from './common.js'
import { createNatsBroker, type NatsBrokerOptions } from './nats.js'
import { hideText } from './option-keys.js'
import { createRabbitMqBroker, type RabbitMqBrokerOptions } from './rabbitmq.js'
import { createRedisBroker, type RedisBrokerOptions } from './redis.js'
import type { Broker } from './types.js'

/**
 * Options of {@link openBroker}: shared settings plus per-adapter ones for the URL's scheme.
 * Any other key is refused with {@link InvalidOptionError}.
 */
export interface OpenBrokerOptions {
  /** Source of time for every adapter. @default systemClock */
  readonly clock?: Clock | undefined
  /** Receives subscriber errors of whichever adapter the URL selects. @default ignore them */
  readonly onError?: ((event: SubscriberErrorEvent) => void) | undefined
  /** Settings used when the URL is `nats://` or `tls://`. @default {} */
  readonly nats?: Omit<NatsBrokerOptions, 'url'> | undefined
  /** Settings used when the URL is `amqp://` or `amqps://`. @default {} */
  readonly rabbitmq?: Omit<RabbitMqBrokerOptions, 'url'> | undefined
  /** Settings used when the URL is `redis://` or `rediss://`. @default {} */
  readonly redis?: Omit<RedisBrokerOptions, 'url'> | undefined
}

/** The keys OpenBrokerOptions takes (internal: not exported from the package root). */
export const openBrokerKeys = optionKeys<OpenBrokerOptions>({
  clock: true,
  onError: true,
  nats: true,
  rabbitmq: true,
  redis: true,
})

/**
 * Opens the broker a URL names: `nats://` or `tls://` (NATS JetStream), `amqp://` or `amqps://`
 * (RabbitMQ), `redis://` or `rediss://` (Redis Streams). Nothing connects until the first
 * publish or subscribe. An unknown scheme throws {@link InvalidOptionError} naming the URL
 * with its credentials hidden. An unknown (misspelt) option, at the top or in an adapter's
 * section, is refused with `InvalidOptionError` (`INVALID_OPTION`) naming it (`openBroker.rabbitMq`,
 * `redis.visibilityTimeout`).
 *
 * @example
 * ```ts
 * import { openBroker } from 'breakwater/brokers'
 * const { publisher, close } = openBroker(process.env.BROKER_URL ?? 'nats://127.0.0.1:4222')
 * await publisher.publish([{ id: 'e1', topic: 'orders', key: 'order-7', payload: '{}', headers: {} }])
 * await close()
 * ```
 */
export function openBroker(url: string, options: OpenBrokerOptions = {}): Broker {
  checkObject('openBroker', options)
  // A misspelt section (rabbitMq, Redis) or a setting meant for an adapter given flat
  // (connectTimeoutMs) would otherwise open the broker with defaults without a word.
  // Undefined is absent, as for every other factory; a value is hidden when it is text (a
  // credential given flat, `password`, must not be quoted into logs).
  for (const [name, value] of Object.entries(options)) {
    if (!openBrokerKeys.has(name) && value !== undefined) {
      throw new InvalidOptionError(
        `openBroker.${name}`,
        'one of clock, onError, nats, rabbitmq, redis (adapter settings go in their section, e.g. { rabbitmq: { connectTimeoutMs } })',
        hideText(value),
      )
    }
  }
  // Only undefined means the default: clock: null was handed on and refused under the
  // adapter's name.
  checkOptionKeys('openBroker', options, openBrokerKeys)
  // Every adapter's settings are checked, not only the one the URL picks: a string or array
  // there would otherwise be spread into the options and silently ignored.
  for (const name of ['nats', 'rabbitmq', 'redis'] as const) {
    if (options[name] !== undefined) checkObject(`openBroker.${name}`, options[name])
  }
  const scheme = typeof url === 'string' ? /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1] : undefined
  const shared = {
    ...(options.clock === undefined ? {} : { clock: options.clock }),
    ...(options.onError === undefined ? {} : { onError: options.onError }),
  }
  switch (scheme?.toLowerCase()) {
    case 'nats':
    case 'tls':
      return createNatsBroker({ ...shared, ...definedOnly(options.nats), url })
    case 'amqp':
    case 'amqps':
      return createRabbitMqBroker({ ...shared, ...definedOnly(options.rabbitmq), url })
    case 'redis':
    case 'rediss':
      return createRedisBroker({ ...shared, ...definedOnly(options.redis), url })
    default:
      throw new InvalidOptionError(
        'url',
        'a nats://, tls://, amqp://, amqps://, redis:// or rediss:// URL',
        // No adapter's query to judge: every value is hidden (a credential may be among them).
        typeof url === 'string' ? redactUrlValues(url) : url,
      )
  }
}

/**
 * An adapter's own settings without the keys given as undefined: undefined means left out, so
 * `nats: { clock: undefined }` keeps openBroker's clock (a plain spread would replace it with
 * undefined, and the adapter would use its default).
 */
function definedOnly<T extends object>(settings: T | undefined): Partial<T> {
  if (settings === undefined) return {}
  return Object.fromEntries(
    Object.entries(settings).filter(([, value]) => value !== undefined),
  ) as Partial<T>
}

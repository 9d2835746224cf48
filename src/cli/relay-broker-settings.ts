// `breakwater relay`'s settings of where a broker puts the events: the RabbitMQ exchange and its
// type, the NATS stream shared by every topic. They must match what the consumers open the
// broker with (`createRabbitMqBroker({ exchange })`, `createNatsBroker({ stream })`), or their
// queues never see an event (BROKER_UNROUTABLE naming the relay's exchange) or the relay cannot
// create its per-topic streams over theirs (BROKER_MISCONFIGURED). They are flags, as the
// relay's other settings are, rather than query parameters of the --broker URL: those are the
// client library's (amqplib reads some, and the adapter refuses the others).
import type { NatsBrokerOptions, RabbitMqBrokerOptions } from '../brokers/index.js'
import { InvalidOptionError } from '../core/errors.js'
import { redactSecrets } from '../observability/index.js'
import { UsageError } from './usage.js'

/** The value flags of the broker placement settings. */
export const brokerSettingFlags: readonly string[] = [
  '--rabbitmq-exchange',
  '--rabbitmq-exchange-type',
  '--nats-stream',
  '--nats-stream-subjects',
]

/** The help text of the flags, in the relay's options section. */
export const brokerSettingsHelp = `  --rabbitmq-exchange <name> the exchange events are published to, with an amqp(s)://
                             --broker; the consumers' createRabbitMqBroker({ exchange })
                             (default breakwater)
  --rabbitmq-exchange-type <type>
                             topic (default) or direct: the consumers' exchangeType
  --nats-stream <name>       one JetStream stream for every topic, with a nats:// or tls://
                             --broker; the consumers' createNatsBroker({ stream }) (default:
                             one stream per topic); needs --nats-stream-subjects
  --nats-stream-subjects <s> that stream's subjects, comma-separated (orders.>,billing.*):
                             every published topic must match one
`

/** The adapter sections the flags fill, for `openBroker`. */
export interface BrokerSettings {
  readonly rabbitmq?: Pick<RabbitMqBrokerOptions, 'exchange' | 'exchangeType'>
  readonly nats?: Pick<NatsBrokerOptions, 'stream'>
}

/**
 * Reads the flags for a broker of `kind` (`rabbitmq`, `nats`, ...). A flag of another broker is
 * refused: it would be ignored without a word. What the adapter checks itself (the exchange's
 * and the stream's names) is refused when the broker is built: see {@link brokerSettingRefusal}.
 */
export function parseBrokerSettings(
  values: ReadonlyMap<string, string>,
  kind: string,
): BrokerSettings {
  const applies = (flags: readonly string[], brokerKind: string, urls: string) => {
    if (kind === brokerKind) return
    for (const flag of flags)
      if (values.has(flag)) throw new UsageError(`${flag} applies only to ${urls} --broker`)
  }
  applies(['--rabbitmq-exchange', '--rabbitmq-exchange-type'], 'rabbitmq', 'an amqp:// or amqps://')
  applies(['--nats-stream', '--nats-stream-subjects'], 'nats', 'a nats:// or tls://')
  if (kind === 'rabbitmq') {
    const exchange = values.get('--rabbitmq-exchange')
    const exchangeType = values.get('--rabbitmq-exchange-type')
    if (exchangeType !== undefined && exchangeType !== 'topic' && exchangeType !== 'direct')
      throw new UsageError(
        `--rabbitmq-exchange-type must be "topic" or "direct", got "${redactSecrets(exchangeType)}"`,
      )
    if (exchange === undefined && exchangeType === undefined) return {}
    return {
      rabbitmq: {
        ...(exchange === undefined ? {} : { exchange }),
        ...(exchangeType === undefined ? {} : { exchangeType }),
      },
    }
  }
  if (kind === 'nats') {
    const name = values.get('--nats-stream')
    const subjectList = values.get('--nats-stream-subjects')
    if (name === undefined && subjectList === undefined) return {}
    if (name === undefined) throw new UsageError('--nats-stream-subjects needs --nats-stream')
    if (subjectList === undefined)
      throw new UsageError(
        '--nats-stream needs --nats-stream-subjects (the subjects the stream stores)',
      )
    const subjects = subjectList.split(',')
    if (subjects.some((subject) => !/^[\x21-\x7e]+$/.test(subject)))
      throw new UsageError(
        `--nats-stream-subjects must be subjects separated by commas, none empty and without spaces, got "${redactSecrets(subjectList)}"`,
      )
    return { nats: { stream: { name, subjects } } }
  }
  return {}
}

/** The flag that sets each adapter option the flags fill. */
const flagOfOption: Readonly<Record<string, string>> = {
  'rabbitmq.exchange': '--rabbitmq-exchange',
  'rabbitmq.exchangeType': '--rabbitmq-exchange-type',
  'nats.stream.name': '--nats-stream',
  'nats.stream.subjects': '--nats-stream-subjects',
}

/**
 * The adapter's refusal of a value the flags gave (an exchange starting with `amq.`, a stream
 * name with a dot) worded with the flag and the whole value; undefined for any other error.
 */
export function brokerSettingRefusal(
  error: unknown,
  values: ReadonlyMap<string, string>,
): string | undefined {
  if (!(error instanceof InvalidOptionError)) return undefined
  const flag = flagOfOption[error.option]
  const value = flag === undefined ? undefined : values.get(flag)
  if (flag === undefined || value === undefined) return undefined
  return `${flag}: expected ${error.expected}, got "${redactSecrets(value)}"`
}

// The brokers capability: the Publisher/Subscriber seam and its adapters. Importing this
// module loads no broker driver; each adapter imports its own (nats, amqplib, ioredis) on
// first use.

export type { BrokerCommonOptions, SubscriberErrorEvent, SubscriberErrorPhase } from './common.js'
export { KEY_HEADER, redactUrl } from './common.js'
export type { DeadLetteredEvent, DeliveryLimitOptions } from './delivery-limit.js'
export { DeliveryLimitError, withDeliveryLimit } from './delivery-limit.js'
export type { BrokerErrorCode, BrokerErrorOptions, BrokerKind } from './errors.js'
export { BrokerDriverMissingError, BrokerError, SubscriptionCloseTimeoutError } from './errors.js'
export type { NatsBrokerOptions, NatsStreamSpec } from './nats.js'
export { createNatsBroker } from './nats.js'
export type { OpenBrokerOptions } from './open.js'
export { openBroker } from './open.js'
export type { RabbitMqBrokerOptions } from './rabbitmq.js'
export { createRabbitMqBroker } from './rabbitmq.js'
export type { RedisBrokerOptions } from './redis.js'
export { createRedisBroker } from './redis.js'
export type { BrokerTlsOptions, Pem } from './tls.js'
export type {
  Broker,
  IncomingMessage,
  OutgoingMessage,
  Publisher,
  Subscriber,
  Subscription,
} from './types.js'
export type {
  VerifyWebhookSignatureOptions,
  WebhookPublisherOptions,
  WebhookRetryOptions,
  WebhookVerification,
} from './webhook.js'
export {
  createWebhookPublisher,
  signWebhookPayload,
  verifyWebhookSignature,
  WEBHOOK_MESSAGE_ID_HEADER,
  WEBHOOK_SIGNATURE_HEADER,
  WebhookError,
} from './webhook.js'

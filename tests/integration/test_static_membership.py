"""Static membership (CONSUMER_INSTANCE_ID) against the real broker: the service joins its group
under its instance id. What it is for, the stall after a kill it avoids, is measured by
`./dev bench rebalance` (README, Tests)."""

from aiokafka.admin import AIOKafkaAdminClient

from helpers import eventually, running
from services.common.messaging.connection import kafka_options
from services.equipement.app import SPEC as EQUIPEMENT


async def members(admin: AIOKafkaAdminClient, group: str) -> list[str]:
    """The member ids of a group: a static member's begins with its instance id (KIP-345)."""
    [response] = await admin.describe_consumer_groups([group])
    described = response.to_object()["groups"]
    return [m["member_id"] for g in described for m in g["members"]]


async def test_the_consumer_joins_under_its_instance_id(kafka, settings):
    own = settings.model_copy(update={"consumer_instance_id": "equipement-t1"})
    admin = AIOKafkaAdminClient(**kafka_options(kafka.bootstrap_servers))
    await admin.start()
    try:
        async with running(EQUIPEMENT, own):
            joined = await eventually(lambda: members(admin, own.topic("equipement")), what="the group's member")
            assert len(joined) == 1 and joined[0].startswith("equipement-t1-"), joined
    finally:
        await admin.close()

"""Seeds a running test Waldur (tests/real-waldur/serve) through the Django ORM.

Run by tests/real-waldur/seed, which sets DJANGO_SETTINGS_MODULE and the database
variables. Reads one JSON spec on stdin, writes one JSON answer on stdout.

Spec (every key optional but `offerings`):

    {
      "staff":    {"username": "staff"},
      "provider": {"username": "provider"},      # owns the customer
      "customer": {"name": "CSCS"},
      "category": {"title": "HPC"},
      "project":  {"name": "dwdi"},
      "offerings": [{
        "name": "compute",
        "backend_id": "daint",
        "type": "Marketplace.Slurm",
        "components": [{"type": "cpuHours", "name": "CPU Hours",
                        "measured_unit": "cpu-hours", "billing_type": "usage"}],
        "resources": [{"name": "acct1", "backend_id": "acct1", "state": "OK"}],
        "offering_users": [{"username": "alice", "user": "alice"}]
      }]
    }

Users, the customer, category and project are found by name or created, so a second
seed of the same server adds offerings beside the first ones. Offering users link to the
Waldur user named by "user" (created, non-staff, if missing). Resources and their plan
periods (open since `plan_period_start`, default two years ago) are bulk-created, so a
few hundred take well under a second. Tokens never expire (token_lifetime None).

Answer: {"staff": {"username", "uuid", "token"}, "provider": {...}, "customer": {"uuid",
"name"}, "category": {...}, "project": {...}, "offerings": [{"name", "uuid", "backend_id",
"plan_uuid", "components": [{"type", "uuid", "billing_type"}], "resources": [{"name",
"backend_id", "uuid", "state", "plan_period_uuid"}], "offering_users": [{"username",
"uuid", "url", "user_uuid", "user_username"}]}]}; "url" is what set_user_usage takes as
"user".
"""

import datetime
import json
import os
import sys
import time


def main():
    started = time.monotonic()
    import django

    django.setup()
    set_up = time.monotonic()
    spec = json.load(sys.stdin)
    from django.db import transaction

    with transaction.atomic():
        answer = seed(spec)
    print(json.dumps(answer))
    print(
        f"seed: django {set_up - started:.2f} s, writes {time.monotonic() - set_up:.2f} s",
        file=sys.stderr,
    )


def user_named(username, is_staff=False):
    from rest_framework.authtoken.models import Token
    from waldur_core.core.models import User

    user = User.objects.filter(username=username).first()
    if user is None:
        user = User.objects.create_user(
            username=username,
            email=f"{username}@example.org",
            password=None,
            is_staff=is_staff,
            first_name=username,
        )
    elif is_staff and not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    if user.token_lifetime is not None:
        # The handler that runs on creation gives every user the site's lifetime.
        user.token_lifetime = None
        user.save(update_fields=["token_lifetime"])
    token, _ = Token.objects.get_or_create(user=user)
    return user, token


def plain_users(usernames, slugify):
    """The users named, the missing ones bulk-created (non-staff, no password, no token,
    token_lifetime None; no signals: nothing else refers to them)."""
    from waldur_core.core.models import User

    found = {u.username: u for u in User.objects.filter(username__in=usernames)}
    missing = [name for name in dict.fromkeys(usernames) if name not in found]
    created = []
    for name in missing:
        user = User(
            username=name,
            email=f"{name}@example.org",
            first_name=name,
            slug=slugify(name)[:40] or "user",
            token_lifetime=None,
        )
        user.set_unusable_password()
        created.append(user)
    User.objects.bulk_create(created)
    found.update((u.username, u) for u in created)
    return found


def describe_user(user, token):
    return {"username": user.username, "uuid": user.uuid.hex, "token": token.key}


STATES = {"OK": 2, "Erred": 3, "Terminated": 6, "Creating": 1, "Updating": 4, "Terminating": 5}


def seed(spec):
    from django.utils import timezone
    from django.utils.text import slugify
    from waldur_core.permissions.enums import RoleEnum
    from waldur_core.structure.models import Customer, Project
    from waldur_mastermind.marketplace import models

    staff, staff_token = user_named(spec.get("staff", {}).get("username", "staff"), is_staff=True)
    provider, provider_token = user_named(spec.get("provider", {}).get("username", "provider"))

    customer_name = spec.get("customer", {}).get("name", "CSCS")
    customer = Customer.objects.filter(name=customer_name).first()
    if customer is None:
        customer = Customer.objects.create(name=customer_name, abbreviation=customer_name[:8])
    if not customer.has_user(provider, RoleEnum.CUSTOMER_OWNER):
        customer.add_user(provider, RoleEnum.CUSTOMER_OWNER)
    models.ServiceProvider.objects.get_or_create(customer=customer)

    title = spec.get("category", {}).get("title", "HPC")
    category = models.Category.objects.filter(title=title).first() or models.Category.objects.create(title=title)

    project_name = spec.get("project", {}).get("name", "dwdi")
    project = Project.objects.filter(customer=customer, name=project_name).first()
    if project is None:
        project = Project.objects.create(customer=customer, name=project_name)

    default_start = timezone.now() - datetime.timedelta(days=730)
    offerings = []
    for entry in spec.get("offerings", []):
        offerings.append(seed_offering(entry, customer, category, project, default_start, slugify, models))

    return {
        "staff": describe_user(staff, staff_token),
        "provider": describe_user(provider, provider_token),
        "customer": {"uuid": customer.uuid.hex, "name": customer.name},
        "category": {"uuid": category.uuid.hex, "title": category.title},
        "project": {"uuid": project.uuid.hex, "name": project.name},
        "offerings": offerings,
    }


def seed_offering(entry, customer, category, project, default_start, slugify, models):
    secret_options = {"service_provider_can_create_offering_user": True}
    secret_options.update(entry.get("secret_options", {}))
    offering = models.Offering.objects.create(
        name=entry["name"],
        customer=customer,
        category=category,
        type=entry.get("type", "Marketplace.Slurm"),
        state=models.Offering.States.ACTIVE,
        backend_id=entry.get("backend_id", ""),
        secret_options=secret_options,
        plugin_options=entry.get("plugin_options", {}),
    )
    plan = models.Plan.objects.create(
        offering=offering, name=entry.get("plan", "default"), unit=entry.get("plan_unit", "month")
    )
    components = []
    for c in entry.get("components", []):
        component = models.OfferingComponent.objects.create(
            offering=offering,
            type=c["type"],
            name=c.get("name", c["type"]),
            measured_unit=c.get("measured_unit", ""),
            billing_type=c.get("billing_type", "usage"),
            limit_period=c.get("limit_period") if c.get("billing_type") == "limit" else None,
        )
        models.PlanComponent.objects.create(plan=plan, component=component, price=c.get("price", 0), amount=0)
        components.append({"type": component.type, "uuid": component.uuid.hex, "billing_type": component.billing_type})

    start = entry.get("plan_period_start")
    start = datetime.datetime.fromisoformat(start) if start else default_start
    created = start
    resources = []
    for r in entry.get("resources", []):
        created = created + datetime.timedelta(milliseconds=1)
        resources.append(
            models.Resource(
                name=r["name"],
                slug=slugify(r["name"])[:40] or "resource",
                backend_id=r.get("backend_id", r["name"]),
                state=STATES[r.get("state", "OK")],
                offering=offering,
                plan=plan,
                project=project,
                limits=r.get("limits", {}),
                attributes=r.get("attributes", {}),
                created=created,
            )
        )
    models.Resource.objects.bulk_create(resources)
    periods = [models.ResourcePlanPeriod(resource=res, plan=plan, start=start) for res in resources]
    models.ResourcePlanPeriod.objects.bulk_create(periods)

    entries = entry.get("offering_users", [])
    users = plain_users([u.get("user", u["username"]) for u in entries], slugify)
    offering_users = [
        models.OfferingUser(offering=offering, user=users[u.get("user", u["username"])], username=u["username"])
        for u in entries
    ]
    models.OfferingUser.objects.bulk_create(offering_users)

    api_url = os.environ.get("WALDUR_TEST_API_URL", "/api/")
    return {
        "name": offering.name,
        "uuid": offering.uuid.hex,
        "backend_id": offering.backend_id,
        "plan_uuid": plan.uuid.hex,
        "components": components,
        "resources": [
            {
                "name": res.name,
                "backend_id": res.backend_id,
                "uuid": res.uuid.hex,
                "state": res.get_state_display(),
                "plan_period_uuid": period.uuid.hex,
            }
            for res, period in zip(resources, periods)
        ],
        "offering_users": [
            {
                "username": ou.username,
                "uuid": ou.uuid.hex,
                "url": f"{api_url}marketplace-offering-users/{ou.uuid.hex}/",
                "user_uuid": ou.user.uuid.hex,
                "user_username": ou.user.username,
            }
            for ou in offering_users
        ],
    }


if __name__ == "__main__":
    main()

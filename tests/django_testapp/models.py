"""Shelves and items."""

from __future__ import annotations

from django.db import models


class Shelf(models.Model):
    """A named shelf."""

    name = models.CharField(max_length=50, unique=True)

    def __str__(self) -> str:
        return self.name


class Item(models.Model):
    """An item, with a value of each type the backend has to adapt or convert."""

    shelf = models.ForeignKey(Shelf, null=True, on_delete=models.CASCADE, related_name="items")
    name = models.CharField(max_length=100)
    data = models.JSONField(default=dict)
    price = models.DecimalField(max_digits=10, decimal_places=2, null=True)
    on_sale = models.BooleanField(default=False)
    added = models.DateField(null=True)
    seen = models.DateTimeField(null=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return self.name

from django.http import HttpResponse
from django.urls import path


def home(request):
    return HttpResponse("hello from django\n")


urlpatterns = [path("", home)]
